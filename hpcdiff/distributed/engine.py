"""DeepSpeed ZeRO 0-3 engines from the ``zero`` config section, for any ``nn.Module``.

ZeRO (Rajbhandari et al. 2020) partitions optimizer state (stage 1), gradients (stage 2) and
parameters (stage 3) over the data-parallel world. The engine is built on the process group
:func:`hpcdiff.distributed.runtime.init_distributed` started, never on DeepSpeed's own MPI
discovery (wrong address in bare network namespaces, fixed port 29500).
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Callable, Iterable
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Protocol

import deepspeed
import torch

from hpcdiff.distributed.config import ZeroConfig
from hpcdiff.distributed.runtime import DistContext, init_distributed

# DeepSpeed's ZeRO calls a torch collective that torch 2.13 deprecates, once per process and
# rank: nothing a user can act on, so it is not repeated on every rank's console and log.
warnings.filterwarnings(
    "ignore",
    message=r"`torch\.distributed\.all_gather_into_tensor` is deprecated",
    category=FutureWarning,
)

LRSchedulerFactory = Callable[[torch.optim.Optimizer], Any]


class OptimizerSettings(Protocol):
    """AdamW hyper-parameters (the trainer's ``optim`` section satisfies this)."""

    lr: float
    betas: tuple[float, float]
    eps: float
    weight_decay: float
    grad_clip: float  # max global gradient norm; 0 disables clipping


def init_deepspeed(ctx: DistContext) -> None:
    """Hand the running process group to DeepSpeed (no MPI discovery, no re-initialisation).

    On the CPU the ``deepspeed_shm_comm`` op is disabled: it only serves tensor-parallel
    inference all-reduces, and building it is a g++ JIT compile of about a minute (44-104 s
    measured) at the first start.
    """
    if ctx.device.type == "cpu":
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(
        dist_backend=ctx.backend,
        auto_mpi_discovery=False,
        timeout=timedelta(seconds=ctx.timeout_s),
        verbose=False,
    )


def _offload(kind: str, cfg: ZeroConfig) -> dict[str, Any]:
    if kind == "cpu":
        return {"device": "cpu", "pin_memory": True}
    return {"device": "nvme", "nvme_path": cfg.nvme_path}


def _fill_auto(node: Any, values: dict[str, Any]) -> Any:
    """Replace ``"auto"`` leaves of a native DeepSpeed config by the values we computed."""
    if isinstance(node, dict):
        return {
            k: values[k] if v == "auto" and k in values else _fill_auto(v, values)
            for k, v in node.items()
        }
    return node


def deepspeed_config(
    cfg: ZeroConfig,
    optim: OptimizerSettings,
    micro_batch_size: int,
    world_size: int,
    device: torch.device,
) -> dict[str, Any]:
    """The DeepSpeed JSON config for section ``zero`` (or its native ``ds_config`` file)."""
    cfg.validate()
    if micro_batch_size < 1:
        raise ValueError(f"micro_batch_size={micro_batch_size} must be >= 1")
    batch = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": cfg.grad_accum_steps,
        "train_batch_size": micro_batch_size * cfg.grad_accum_steps * world_size,
        "gradient_clipping": optim.grad_clip,
    }
    if cfg.ds_config is not None:
        path = Path(cfg.ds_config)
        if not path.is_file():
            raise FileNotFoundError(f"zero.ds_config: DeepSpeed config not found: {path}")
        return _fill_auto(json.loads(path.read_text()), batch)
    zero: dict[str, Any] = {"stage": cfg.stage}
    if cfg.offload_optimizer != "none":
        zero["offload_optimizer"] = _offload(cfg.offload_optimizer, cfg)
    if cfg.offload_param != "none":
        zero["offload_param"] = _offload(cfg.offload_param, cfg)
    zero.update(cfg.extra)
    torch_adam = cfg.torch_adam if cfg.torch_adam is not None else device.type == "cpu"
    adamw = {
        "lr": optim.lr,
        "betas": list(optim.betas),
        "eps": optim.eps,
        "weight_decay": optim.weight_decay,
        "torch_adam": torch_adam,
    }
    return {
        **batch,
        "zero_optimization": zero,
        "optimizer": {"type": "AdamW", "params": adamw},
        "bf16": {"enabled": cfg.precision == "bf16"},
        "fp16": {"enabled": cfg.precision == "fp16"},
        "steps_per_print": 2**62,
        "wall_clock_breakdown": False,
    }


def model_init_context(
    cfg: ZeroConfig,
    optim: OptimizerSettings,
    micro_batch_size: int,
    ctx: DistContext | None = None,
) -> contextlib.AbstractContextManager:
    """Context to construct the model in: ``deepspeed.zero.Init`` (parameters partitioned as
    they are created) when ``zero.init_on_construct``, else a no-op.

    Under partitioned construction, initialisation code that runs after a submodule was built
    must modify parameters inside ``gathered_parameters(params, modifier_rank=0)``.
    """
    if not cfg.init_on_construct:
        return contextlib.nullcontext()
    ctx = ctx or init_distributed()
    init_deepspeed(ctx)
    config = deepspeed_config(cfg, optim, micro_batch_size, ctx.env.world_size, ctx.device)
    return deepspeed.zero.Init(config_dict_or_path=config)


def gathered_parameters(
    params: torch.nn.Module | Iterable[torch.nn.Parameter], modifier_rank: int | None = None
) -> contextlib.AbstractContextManager:
    """Make ZeRO-3-partitioned parameters whole for code outside ``forward`` (EMA, init,
    export); with ``modifier_rank`` set, that rank's in-place changes are scattered back.
    A no-op for parameters that are not partitioned."""
    if isinstance(params, torch.nn.Module):
        params = params.parameters()
    params = list(params)
    if not any(hasattr(p, "ds_id") for p in params):
        return contextlib.nullcontext()
    return deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank)


def build_engine(
    model: torch.nn.Module,
    cfg: ZeroConfig,
    optim: OptimizerSettings,
    micro_batch_size: int,
    ctx: DistContext | None = None,
    lr_scheduler: LRSchedulerFactory | None = None,
) -> deepspeed.DeepSpeedEngine:
    """Wrap ``model`` in a DeepSpeed engine with an AdamW optimizer (call ``engine(x)``,
    ``engine.backward(loss)``, ``engine.step()``; the model is ``engine.module``, the learning
    rate ``engine.optimizer.param_groups[i]["lr"]``).

    ``lr_scheduler(optimizer)``, if given, builds a schedule DeepSpeed steps and checkpoints.
    Every rank must pass an identically initialised model (same seed) unless it was built
    under :func:`model_init_context`.
    """
    ctx = ctx or init_distributed()
    init_deepspeed(ctx)
    config = deepspeed_config(cfg, optim, micro_batch_size, ctx.env.world_size, ctx.device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError(f"{type(model).__name__} has no trainable parameters")
    device_rank = ctx.device.index if ctx.device.type != "cpu" else ctx.env.local_rank
    engine, *_ = deepspeed.initialize(
        args=SimpleNamespace(device_rank=device_rank),
        model=model,
        model_parameters=trainable,
        config=config,
        lr_scheduler=lr_scheduler,
        dist_init_required=False,
    )
    return engine
