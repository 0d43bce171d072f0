"""The training loop of ``hpcdiff train``: read it top to bottom.

Per rank and step: this rank's window of the grid (its tile of the patch positions plus the
patch margin, ``domain.grid``; the whole grid by default) from NetCDF -> random patches with
the positional embedding of their global positions and the patched condition -> per-patch
diffusion time and noise -> weighted DSM loss of the preconditioned backbone -> DeepSpeed
backward/step (ZeRO 0-3; gradients reduced over all ranks) -> EMA -> metrics, checkpoints,
validation.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import NamedTuple

import torch
import yaml

from hpcdiff import nvtx
from hpcdiff.compiling import compile_network, use_run_cache
from hpcdiff.config import to_dict, write_yaml
from hpcdiff.config.checks import check_domain_grid
from hpcdiff.core import Module
from hpcdiff.data import DataStream
from hpcdiff.data.stream import open_sources
from hpcdiff.data.tiles import Tile
from hpcdiff.distributed import (
    ShardedEMA,
    build_engine,
    capture_rng_state,
    estimate_zero_memory,
    finished_at,
    forward_deepspeed_ranges,
    init_distributed,
    model_init_context,
    restore_rng_state,
    resume,
    save_checkpoint,
    shutdown,
)
from hpcdiff.distributed.collectives import barrier, mean_over_ranks
from hpcdiff.distributed.preempt import check_requeue, conclude, install_stop_signals
from hpcdiff.experiment.build import DiffusionObjective, build_inference_model
from hpcdiff.experiment.conditioning import condition_of
from hpcdiff.experiment.config import TrainConfig
from hpcdiff.experiment.regression import RegressionObjective
from hpcdiff.experiment.residual import plain_inputs, residual_setup
from hpcdiff.experiment.tiling import training_window
from hpcdiff.logs import close_logging, setup_logging
from hpcdiff.train.init_weights import init_from
from hpcdiff.train.lr import lr_at, set_lr
from hpcdiff.train.metrics import (
    MetricsLogger,
    Throughput,
    peak_device_mib,
    peak_rss_mib,
    require_tensorboard,
)
from hpcdiff.train.preflight import check_time_ranges, finished_message
from hpcdiff.train.profile_window import CaptureWindow


class Partition(NamedTuple):
    """What one rank reads: its window of the grid and its data-parallel group."""

    window: Tile
    group: int  # data-parallel group: ranks of a group see the same samples
    groups: int


def partition(cfg: TrainConfig, sources: dict, rank: int, world: int) -> Partition:
    """Rank ``rank``'s window (tile of patch positions + margin, edges on HDF5 chunks) and
    data group; ConfigError (before any work) if ``domain.grid`` does not fit."""
    D = check_domain_grid(cfg.domain.grid, world, key="domain.grid")
    target = sources["target"]
    chunks = target.chunks(cfg.data.variables[0]) or (1, 1, 1)
    window = training_window(
        target.shape, cfg.data.patch_shape, cfg.domain.grid, rank % D, chunks[-2:]
    )
    return Partition(window, rank // D, world // D)


def open_stream(cfg: TrainConfig, part: Partition, split: str, sources: dict) -> DataStream:
    return DataStream(
        cfg.data, split=split, dp_rank=part.group, dp_size=part.groups, tile=part.window,
        sources=sources,
    )  # fmt: skip


def build_objective(cfg: TrainConfig, grid_shape: tuple[int, int]) -> Module:
    """The model all ranks build identically (same seed), wrapped in its training loss:
    :class:`DiffusionObjective` or, for ``objective.kind`` regression,
    :class:`RegressionObjective`. A residual diffusion run's backbone also sees the
    regression mean (one condition channel per target variable)."""
    data = cfg.data
    torch.manual_seed(cfg.run.seed)
    residual = len(data.variables) if cfg.objective.regression_run is not None else 0
    model = build_inference_model(
        model_cfg=cfg.model,
        diffusion_cfg=cfg.diffusion,
        grid_shape=grid_shape,
        patch_shape=tuple(data.patch_shape),
        channels=len(data.variables),
        condition_channels=len(data.condition_variables) + len(data.static_variables) + residual,
        kind=cfg.objective.kind,
    )
    if cfg.objective.kind == "regression":
        return RegressionObjective(model, list(data.patch_shape), data.patches_per_sample)
    return DiffusionObjective(
        model,
        cfg.diffusion.scheduler,
        cfg.diffusion.resolved_scheduler_args(),
        list(data.patch_shape),
        data.patches_per_sample,
    )


def _numel(p: torch.nn.Parameter) -> int:
    return getattr(p, "ds_numel", p.numel())  # whole size, also when ZeRO-3 partitioned it


def describe(cfg: TrainConfig, objective: Module, world: int) -> dict:
    """What ``--dry-run`` prints: parameter counts and the ZeRO memory estimate per rank."""
    n = sum(_numel(p) for p in objective.parameters() if p.requires_grad)
    mem = estimate_zero_memory(n, cfg.zero.stage, world, cfg.zero.precision)
    return {
        "parameters": sum(_numel(p) for p in objective.parameters()),
        "trainable_parameters": n,
        "backbone": cfg.model.name,
        "objective": cfg.objective.kind + (" (residual)" if cfg.objective.regression_run else ""),
        "zero_stage": cfg.zero.stage,
        "world_size": world,
        "zero_memory_per_rank_mib": round(mem.total / 2**20, 2),
    }


def autocast(device: torch.device, precision: str):
    """Mixed-precision compute for ``zero.precision`` bf16/fp16 (the engine holds low-precision
    weights; inputs and the noisy state stay float32, the convolutions run in low precision)."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


@torch.no_grad()
def validation_loss(engine, cfg: TrainConfig, device: torch.device, rank: int, valid: DataStream,
                    inputs=plain_inputs):  # fmt: skip
    """Mean loss over ``run.val_batches`` validation batches with fixed noise."""
    losses = []
    engine.train(False)  # evaluation mode (dropout off)
    forked = [device] if device.type == "cuda" else []  # manual_seed reseeds CUDA too
    valid.load_state_dict({})  # from the first validation time again
    with torch.random.fork_rng(devices=forked), autocast(device, cfg.zero.precision):
        torch.manual_seed(cfg.run.seed + 12345 + rank)
        for _, batch in zip(range(cfg.run.val_batches), valid):
            origin, batch = batch.origin, batch.to(device)
            loss_map = engine(*inputs(batch, condition_of(batch)), origin)
            losses.append(loss_map.float().mean())
    valid.close()
    engine.train()
    local = torch.stack(losses).mean() if losses else torch.zeros((), device=device)
    return mean_over_ranks(local).item()


def due(done: int, every: int, total: int) -> bool:
    """The cadence of logging, checkpointing and validation: after every ``every``-th step and
    after the last one; never when ``every`` is 0."""
    return every > 0 and (done % every == 0 or done == total)


def _train_step(engine, stream: DataStream, device: torch.device, accum: int, precision: str,
                inputs=plain_inputs):  # fmt: skip
    """One optimizer step of ``accum`` micro-batches; returns the last per-patch loss map.
    ``inputs(batch, condition)`` -> (x0, weight, condition) the objective sees."""
    for _ in range(accum):  # DeepSpeed applies the update after the last micro-batch
        # Fetch the next batch of whole-domain samples.
        with nvtx.range("train.data"):
            batch = next(stream)
            origin = batch.origin  # (B, 2) global corner of each window, on the host
            batch = batch.to(device, non_blocking=True)
            x0, weight, condition = inputs(batch, condition_of(batch))

        # Forward: random patches (and per-patch times and noise), per-patch loss map.
        with nvtx.range("train.forward"), autocast(device, precision):
            loss_map = engine(x0, weight, condition, origin)
        with nvtx.range("train.loss"):
            loss = loss_map.float().mean()
        with nvtx.range("train.backward"):
            engine.backward(loss)
        with nvtx.range("train.optim"):
            engine.step()
    return loss_map


def _resume(engine, ema, stream: DataStream, cfg: TrainConfig, ckpt_dir: Path, rank: int):
    """(first step, samples seen): from the newest checkpoint (engine, EMA, data position and
    RNG state restored) or (0, 0) with this rank's own noise seed."""
    resumed = resume(engine, ckpt_dir, cfg.checkpoint.resume, ema)
    if resumed is None:
        torch.manual_seed(cfg.run.seed * 100_003 + rank + 1)  # distinct noise per rank
        return 0, 0
    start, extra = resumed
    stream.load_state_dict(extra["data"])
    if "resharded_from" in extra:  # per-rank RNG streams do not map to another rank count
        torch.manual_seed((cfg.run.seed * 100_003 + rank + 1) * 1_000_003 + start)
    else:
        restore_rng_state(extra["rng"])
    return start, int(extra["samples_seen"])


def _finished(run_dir: Path, step: int, steps: int, rank: int, stream: DataStream) -> Path:
    """A finished run: say so in one line, train nothing."""
    if rank == 0:
        print(finished_message(run_dir, step, steps), file=sys.stderr, flush=True)
    stream.close()
    close_logging()
    shutdown()
    return run_dir


def train(cfg: TrainConfig, dry_run: bool = False) -> Path:
    """Run (or resume) the experiment ``cfg``; returns the run directory."""
    stop = install_stop_signals(cfg.run.stop_signals)  # the handler only sets a flag
    check_requeue(cfg.run.requeue, cfg.checkpoint.resume)
    ctx = init_distributed(cfg.dist)
    rank, world, device = ctx.env.rank, ctx.env.world_size, ctx.device
    require_tensorboard(cfg.run.tensorboard)  # every rank stops, before any work
    nvtx.configure(cfg.profiling, device)  # ranges on (or HPCDIFF_NVTX), block ranges
    forward_deepspeed_ranges()  # while ranges are on: DeepSpeed's, in domain DeepSpeed
    run_dir, steps = cfg.run.dir, cfg.run.steps

    # Data: this rank's window of the grid, for the training times of its data group.
    sources = open_sources(cfg.data)
    check_time_ranges(cfg, sources)  # every split, before any work (also --dry-run)
    grid_shape = tuple(sources["target"].shape)
    part = partition(cfg, sources, rank, world)
    stream = open_stream(cfg, part, "train", sources)
    # zero.init_on_construct: parameters are partitioned as they are created (ZeRO-3).
    with model_init_context(cfg.zero, cfg.optim, cfg.data.batch_size, ctx):
        objective = build_objective(cfg, grid_shape)
    summary = describe(cfg, objective, world)
    if cfg.model.init_from:  # fine-tuning: weights of a .mdlus file (a resume overrides them)
        report = init_from(objective, cfg.model.init_from, cfg.model.init_strict)
        summary["init_from"] = report.summary()
    if dry_run:
        stream.close()
        if rank == 0:
            print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
            print(json.dumps(summary, indent=1))
        shutdown()
        return run_dir
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_yaml(cfg, run_dir / "config.yaml")  # the config this (re)start runs with
    setup_logging(run_dir, rank, cfg.run.log_level)  # <run_dir>/logs/rank{rank:05d}.log
    ckpt_dir = run_dir / cfg.checkpoint.dir
    done_at = finished_at(ckpt_dir, cfg.checkpoint.resume, steps)  # before any engine is built
    if done_at is not None:
        return _finished(run_dir, done_at, steps, rank, stream)

    # What the objective sees of a batch: the target, or a residual diffusion run's residual.
    inputs = plain_inputs
    if cfg.objective.regression_run is not None:
        inputs = residual_setup(cfg, part, sources, run_dir, device, rank)

    # Engine (ZeRO-sharded optimizer state / gradients / parameters), EMA, resume.
    engine = build_engine(objective, cfg.zero, cfg.optim, cfg.data.batch_size, ctx)
    if cfg.model.compile:  # the backbone only; ZeRO's hooks stay eager around it
        use_run_cache(run_dir)
        compile_network(engine.module.model, cfg.model.compile_backend)
    ema = ShardedEMA(engine.module, cfg.ema) if cfg.ema.enabled else None
    start, samples_seen = _resume(engine, ema, stream, cfg, ckpt_dir, rank)
    if start > 0:
        summary.pop("init_from", None)
    if start >= steps:  # resumed from a checkpoint path at or past run.steps
        return _finished(run_dir, start, steps, rank, stream)
    accum = cfg.zero.grad_accum_steps
    global_batch = cfg.data.batch_size * part.groups * accum  # samples per optimizer step
    patches_per_step = cfg.data.batch_size * world * accum * cfg.data.patches_per_sample
    valid = open_stream(cfg, part, "valid", sources) if cfg.run.val_every else None
    logger = MetricsLogger(run_dir, rank, steps, start, progress=cfg.run.progress,
                           tensorboard=cfg.run.tensorboard)  # fmt: skip
    if rank == 0:
        print(json.dumps({"run_dir": str(run_dir), "start_step": start, **summary}), flush=True)

    def checkpoint(step: int) -> Path:  # periodic, final and stop checkpoints alike
        with nvtx.range("train.ckpt"):
            extra = {"data": stream.state_dict(), "rng": capture_rng_state(),
                     "samples_seen": samples_seen}  # fmt: skip
            return save_checkpoint(engine, ckpt_dir, step, ema, extra, cfg.checkpoint.keep_last)

    prof = cfg.profiling
    stopped: tuple[Path, int] | None = None  # (checkpoint, step) once every rank agreed to stop
    window = CaptureWindow(prof.capture_steps, prof.torch_trace, run_dir, rank, device)
    meter = Throughput(global_batch, patches_per_step)
    for step in range(start, steps):
        window.before_step(step)
        with nvtx.range("train.step"):
            lr = lr_at(step, steps, cfg.optim)
            set_lr(engine.optimizer, lr)
            loss_map = _train_step(engine, stream, device, accum, cfg.zero.precision, inputs)

            # Update EMA.
            if ema is not None:
                with nvtx.range("train.ema"):
                    ema.update(samples_seen, global_batch)
        window.after_step(step)
        samples_seen += global_batch
        meter.step()
        done = step + 1
        logger.advance(done)
        # One collective: every rank stops after this step (a run at its last step just ends).
        stopping = stop.agreed(device) and done < steps

        # Log (losses averaged over ranks).
        if due(done, cfg.run.log_every, steps) or stopping:
            per_channel = mean_over_ranks(loss_map.detach().float().mean(dim=(0, 2, 3)))
            logger.log({
                "step": done,
                "loss": per_channel.mean().item(),
                "loss_per_channel": dict(zip(cfg.data.variables, per_channel.tolist())),
                "lr": lr,
                **meter.rates(),
                "peak_rss_mib": peak_rss_mib(),
                "peak_device_mib": peak_device_mib(device),
            })  # fmt: skip
            meter.restart()

        # Checkpoint (every rank writes its shard; atomic); also when a stop signal came.
        if due(done, cfg.checkpoint.every_steps, steps) or stopping:
            path = checkpoint(done)
            meter.skip()  # throughput excludes checkpoint time
        if stopping:
            stopped = (path, done)
            break

        # Validate with the EMA weights.
        if due(done, cfg.run.val_every, steps):
            with nvtx.range("train.validate"):
                swap = ema.swapped_in() if ema is not None else contextlib.nullcontext()
                with swap:
                    val = validation_loss(engine, cfg, device, rank, valid, inputs)
                logger.log({"step": done, "val_loss": val})
            meter.skip()

    stream.close()
    if valid is not None:
        valid.close()
    logger.close()
    error = None
    if stopped is not None:  # verify, then requeue the Slurm job or print how to resume
        error = conclude(*stopped, stop, cfg.run.requeue, cfg.checkpoint.resume,
                         ctx.env.launcher, rank)  # fmt: skip
    close_logging()
    barrier()
    shutdown()
    if error is not None:
        raise error
    return run_dir
