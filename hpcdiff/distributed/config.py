"""Config sections of the distributed layer: ``dist``, ``zero``, ``ema``, ``checkpoint``,
``domain`` (tiled training).

Plain dataclasses for :func:`hpcdiff.config.from_dict` (which checks the annotated types and
calls ``validate()``); every error names the dotted key. Optimizer hyper-parameters (lr, betas,
eps, weight decay, gradient clipping) live in the trainer's ``optim`` section.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from hpcdiff.config import ConfigError
from hpcdiff.config.checks import check_relative_path


def _require(ok: bool, key: str, value: Any, need: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}' {need}, got {value!r}")


@dataclass
class DistConfig:
    """Section ``dist``: process group backend, device binding and failure detection."""

    backend: Literal["auto", "gloo", "nccl", "mpi"] = "auto"  # auto: nccl on GPUs, gloo on CPU
    # auto: CUDA device local_rank % visible GPUs when there is one, else the CPU; cuda fails
    # when no GPU is visible.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    timeout_s: float = 600.0  # collective timeout; a rank silent this long is declared dead
    heartbeat: bool = True  # watchdog thread that names a dead or hung rank

    def validate(self) -> None:
        _require(self.timeout_s > 0, "dist.timeout_s", self.timeout_s, "must be > 0")


@dataclass
class ZeroConfig:
    """Section ``zero``: DeepSpeed ZeRO stage, precision, accumulation and offload."""

    # What is partitioned over the ranks: 0 nothing (data parallel), 1 optimizer state,
    # 2 also gradients, 3 also parameters.
    stage: Literal[0, 1, 2, 3] = 0
    # fp32, or bf16/fp16 weights in the engine with autocast compute (fp16 with DeepSpeed's
    # dynamic loss scaling); inputs and the noisy state stay fp32.
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    # Micro-batches per optimizer step: samples per step = data.batch_size x data groups x this.
    grad_accum_steps: int = 1
    # Optimizer state (and the AdamW step) on the CPU (stage >= 1) or swapped to NVMe files
    # under zero.nvme_path (stage 3); none keeps it on the device.
    offload_optimizer: Literal["none", "cpu", "nvme"] = "none"
    offload_param: Literal["none", "cpu", "nvme"] = "none"  # stage 3 only
    # Directory on a fast local disk for NVMe offload; required by, and only used with,
    # offload_optimizer or offload_param nvme (stage 3).
    nvme_path: str | None = None
    init_on_construct: bool = False  # stage 3: build the model already partitioned (zero.Init)
    torch_adam: bool | None = None  # None: torch's AdamW on CPU, DeepSpeed's fused AdamW on GPU
    extra: dict[str, Any] = field(default_factory=dict)  # merged into "zero_optimization"
    ds_config: str | None = None  # native DeepSpeed JSON used instead; "auto" values filled in

    def validate(self) -> None:
        _require(self.stage in (0, 1, 2, 3), "zero.stage", self.stage, "must be 0, 1, 2 or 3")
        _require(
            self.precision in ("fp32", "bf16", "fp16"),
            "zero.precision",
            self.precision,
            "must be fp32, bf16 or fp16",
        )
        _require(
            self.grad_accum_steps >= 1,
            "zero.grad_accum_steps",
            self.grad_accum_steps,
            "must be >= 1",
        )
        for key in ("offload_optimizer", "offload_param"):
            value = getattr(self, key)
            _require(
                value in ("none", "cpu", "nvme"), f"zero.{key}", value, "must be none, cpu or nvme"
            )
        _require(
            self.offload_param == "none" or self.stage == 3,
            "zero.offload_param",
            self.offload_param,
            "needs zero.stage=3",
        )
        _require(
            self.offload_optimizer == "none" or self.stage >= 1,
            "zero.offload_optimizer",
            self.offload_optimizer,
            "needs zero.stage >= 1",
        )
        # DeepSpeed swaps to NVMe at stage 3 only; at stages 1-2 an "nvme" optimizer offload
        # silently keeps the state in CPU memory.
        _require(
            self.offload_optimizer != "nvme" or self.stage == 3,
            "zero.offload_optimizer",
            self.offload_optimizer,
            "needs zero.stage=3 (DeepSpeed swaps optimizer state to NVMe only at stage 3; "
            "at stages 1-2 use zero.offload_optimizer=cpu)",
        )
        nvme = "nvme" in (self.offload_optimizer, self.offload_param)
        _require(
            not nvme or bool(self.nvme_path),
            "zero.nvme_path",
            self.nvme_path,
            "must name a directory for NVMe offload",
        )
        _require(
            nvme or self.nvme_path is None,
            "zero.nvme_path",
            self.nvme_path,
            "is only used with NVMe offload (zero.stage=3 and zero.offload_optimizer or "
            "zero.offload_param nvme); remove it or set null",
        )
        _require(
            not self.init_on_construct or self.stage == 3,
            "zero.init_on_construct",
            self.init_on_construct,
            "needs zero.stage=3",
        )


@dataclass
class EMAConfig:
    """Section ``ema``: EDM's EMA (Karras et al. 2022, training_loop), or a fixed decay.

    ``beta = 0.5 ** (batch_size / max(h, 1e-8))`` with ``h = min(halflife_samples,
    rampup_ratio * samples_seen)``; ``decay`` replaces the schedule when set.
    """

    # Keep an exponential moving average of the weights (sharded like them); validation,
    # checkpoints and `hpcdiff sample` then use the EMA weights.
    enabled: bool = True
    halflife_samples: float | None = 500_000.0  # EDM: ema_halflife_kimg = 500
    rampup_ratio: float | None = 0.05  # EDM default; null disables the ramp-up
    decay: float | None = None  # fixed decay per optimizer step instead of the schedule; in [0, 1)

    def validate(self) -> None:
        if self.decay is not None:
            _require(0 <= self.decay < 1, "ema.decay", self.decay, "must be in [0, 1)")
            return
        _require(
            self.halflife_samples is not None and self.halflife_samples > 0,
            "ema.halflife_samples",
            self.halflife_samples,
            "must be > 0 (or set ema.decay)",
        )
        _require(
            self.rampup_ratio is None or self.rampup_ratio > 0,
            "ema.rampup_ratio",
            self.rampup_ratio,
            "must be > 0 or null",
        )

    def beta(self, samples_seen: int, batch_size: int) -> float:
        """Decay for a step of ``batch_size`` samples taken after ``samples_seen`` samples.

        >>> EMAConfig(halflife_samples=1000, rampup_ratio=None).beta(0, 1000)
        0.5
        """
        if self.decay is not None:
            return float(self.decay)
        halflife = float(self.halflife_samples)
        if self.rampup_ratio is not None:
            halflife = min(halflife, samples_seen * self.rampup_ratio)
        return 0.5 ** (batch_size / max(halflife, 1e-8))


@dataclass
class CheckpointConfig:
    """Section ``checkpoint``: where and how often to save, what to resume from."""

    dir: str = "checkpoints"  # relative to the run directory, without `..`
    every_steps: int = 1000  # save every N optimizer steps and after the last step
    keep_last: int = 3  # newest checkpoints kept; older ones are deleted after each save
    resume: str = "latest"  # latest | none | path of one checkpoint directory

    def validate(self) -> None:
        _require(self.every_steps >= 1, "checkpoint.every_steps", self.every_steps, "must be >= 1")
        _require(self.keep_last >= 1, "checkpoint.keep_last", self.keep_last, "must be >= 1")
        check_relative_path(self.dir, "checkpoint.dir")  # written only inside the run directory
        _require(
            bool(self.resume),
            "checkpoint.resume",
            self.resume,
            "must be latest, none or a checkpoint directory",
        )


@dataclass
class DomainConfig:
    """Section ``domain``: domain decomposition of training (see :mod:`hpcdiff.experiment.tiling`).

    ``grid: [py, px]`` ranks share each sample, each reading and training on the patches of its
    own tile; world = data groups x py px (the product must divide the world size).
    """

    grid: tuple[int, int] = (1, 1)  # tiles (py, px) per sample

    def validate(self) -> None:
        py, px = self.grid
        _require(py >= 1 and px >= 1, "domain.grid", list(self.grid), "must be [py, px] >= 1")
