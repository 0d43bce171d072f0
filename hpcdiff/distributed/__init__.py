"""Everything that talks to other processes: launcher discovery, process group, ZeRO engines,
EMA under ZeRO, sharded checkpoints. The only package that imports torch.distributed,
DeepSpeed or mpi4py; submodules load lazily, so ``import hpcdiff.distributed`` stays cheap.

Typical use by a training loop (``optim`` is the trainer's AdamW section)::

    ctx = init_distributed(dist_cfg)                       # any launcher, or none
    with model_init_context(zero_cfg, optim, micro_batch, ctx):  # zero.Init only if asked
        model = build_model()
    engine = build_engine(model, zero_cfg, optim, micro_batch, ctx)
    ema = ShardedEMA(engine.module, ema_cfg)
    start = resume(engine, ckpt_dir, ckpt_cfg.resume, ema)  # (step, extra) or None
    ...  loss = ...engine(x)...; engine.backward(loss); engine.step(); ema.update(seen, batch)
    save_checkpoint(engine, ckpt_dir, step, ema, extra={"rng": capture_rng_state(), ...})
    shutdown()
"""

from __future__ import annotations

from hpcdiff.lazy import lazy_exports

_EXPORTS = {
    "DistEnv": "env",
    "resolve_env": "env",
    "expand_hostlist": "env",
    "DistConfig": "config",
    "ZeroConfig": "config",
    "OptimizerConfig": "config",
    "EMAConfig": "config",
    "CheckpointConfig": "config",
    "DistContext": "runtime",
    "init_distributed": "runtime",
    "select_device": "runtime",
    "shutdown": "runtime",
    "build_engine": "engine",
    "deepspeed_config": "engine",
    "model_init_context": "engine",
    "gathered_parameters": "engine",
    "ZeroMemory": "memory",
    "estimate_zero_memory": "memory",
    "ZeroMemoryProbe": "memory",
    "ShardedEMA": "ema",
    "save_checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "resume": "checkpoint",
    "find_latest": "checkpoint",
    "finished_at": "checkpoint",
    "verify_checkpoint": "checkpoint",
    "capture_rng_state": "checkpoint",
    "restore_rng_state": "checkpoint",
    "consolidate_checkpoint": "consolidate",
    "forward_deepspeed_ranges": "profiling",
    "consolidate_once": "consolidate",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(
    __name__, {k: f"hpcdiff.distributed.{v}" for k, v in _EXPORTS.items()}
)
