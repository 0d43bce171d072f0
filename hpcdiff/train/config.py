"""The experiment config of ``hpcdiff train``: one dataclass section per component.

Sections: ``run`` (here), ``data`` (:class:`hpcdiff.data.DataConfig`), ``model`` and
``diffusion`` (here), ``optim`` (:class:`hpcdiff.train.lr.OptimConfig`), ``dist``, ``zero``,
``ema``, ``checkpoint``, ``domain`` (:mod:`hpcdiff.distributed.config`), ``profiling`` and
``sample`` (here).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hpcdiff.config import ConfigError, apply_overrides, from_dict, read_yaml
from hpcdiff.data.config import DataConfig
from hpcdiff.distributed.config import (
    CheckpointConfig,
    DistConfig,
    DomainConfig,
    EMAConfig,
    ZeroConfig,
)
from hpcdiff.train.lr import OptimConfig


@dataclass
class RunConfig:
    """Section ``run``: where results go, how long to train, how often to report."""

    name: str = "run"
    out_dir: str = "runs"
    seed: int = 0
    steps: int = 1000
    log_every: int = 10
    val_every: int = 0  # 0 disables periodic validation
    val_batches: int = 2
    progress: Literal["auto", "always", "never"] = "auto"  # tqdm bar on rank 0; auto: on a TTY
    tensorboard: bool = False  # scalars to <run dir>/tensorboard (needs the tensorboard package)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"  # <run dir>/logs/rank*.log

    def validate(self) -> None:
        for key in ("steps", "log_every", "val_batches"):
            if getattr(self, key) < 1:
                raise ConfigError(f"config key 'run.{key}' must be >= 1, got {getattr(self, key)}")
        if self.val_every < 0:
            raise ConfigError(f"config key 'run.val_every' must be >= 0, got {self.val_every}")

    @property
    def dir(self) -> Path:
        return Path(self.out_dir) / self.name


@dataclass
class ModelConfig:
    """Section ``model``: a named backbone size plus constructor overrides."""

    name: str = "SongUNet-S"  # see `hpcdiff models --list`
    args: dict[str, Any] = field(default_factory=dict)  # overrides of the named size
    positional_embedding: Literal["learnable", "sinusoidal", "linear"] | None = "sinusoidal"
    channels_positional_embedding: int = 4

    def validate(self) -> None:
        from hpcdiff.models.registry import model_names

        if self.name not in model_names():
            raise ConfigError(
                f"config key 'model.name': {self.name!r} is unknown; choose one of {model_names()}"
            )
        for key in ("in_channels", "out_channels", "img_resolution", "input_size"):
            if key in self.args:
                raise ConfigError(
                    f"config key 'model.args.{key}' is derived from the data section; remove it"
                )


@dataclass
class DiffusionConfig:
    """Section ``diffusion``: noise scheduler and preconditioner."""

    scheduler: Literal["edm", "edm_log_uniform", "ve", "vp", "iddpm", "student_t_edm"] = "edm"
    scheduler_args: dict[str, Any] = field(default_factory=dict)
    preconditioner: Literal["edm", "ve", "vp", "iddpm"] = "edm"
    sigma_data: float = 1.0  # data are normalized to unit variance by the stream


@dataclass
class ProfilingConfig:
    """Section ``profiling``: NVTX ranges (see ``hpcdiff.nvtx.RANGE_NAMES``) and a capture
    window of optimizer steps [start, stop) (see :mod:`hpcdiff.train.profile_window`).
    ``model_ranges`` adds ranges around backbone blocks (``model.enc.<i>``, ``model.dec.<i>``,
    ``model.block.<i>``) when ranges are on; off, no hook is registered."""

    nvtx: bool = False
    model_ranges: bool = False  # ranges around every SongUNet enc/dec entry and DiT block
    capture_steps: tuple[int, int] | None = None  # cudaProfilerStart/Stop around these steps
    torch_trace: bool = False  # Chrome trace per rank of the capture window (torch.profiler)

    def validate(self) -> None:
        if self.capture_steps is not None:
            start, stop = self.capture_steps
            if not 0 <= start < stop:
                raise ConfigError(
                    f"config key 'profiling.capture_steps' must be [start, stop) with "
                    f"0 <= start < stop, got {list(self.capture_steps)}"
                )
        if self.torch_trace and self.capture_steps is None:
            raise ConfigError("config key 'profiling.torch_trace' needs profiling.capture_steps")


@dataclass
class SampleConfig:
    """Section ``sample``: generation after training (quickstart) and ``hpcdiff sample``."""

    num_steps: int = 18
    solver: str = "heun"
    ensemble: int = 2
    times: int = 1  # how many validation times to generate for
    overlap_pix: int = 8
    boundary_pix: int = 0
    chunk_size: int | None = None
    window: Literal["uniform", "cosine"] = "uniform"
    seed: int = 0
    domain_grid: tuple[int, int] = (1, 1)  # tiles (py, px) per sample; world = groups x py px


@dataclass
class TrainConfig:
    """The whole experiment."""

    data: DataConfig
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    zero: ZeroConfig = field(default_factory=ZeroConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    domain: DomainConfig = field(default_factory=DomainConfig)
    profiling: ProfilingConfig = field(default_factory=ProfilingConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    def validate(self) -> None:
        capture = self.profiling.capture_steps
        if capture is not None and capture[1] > self.run.steps:
            raise ConfigError(
                f"config key 'profiling.capture_steps': stop {capture[1]} is after "
                f"run.steps={self.run.steps}"
            )
        if self.data.tile_margin != 0:
            raise ConfigError(
                f"config key 'data.tile_margin': the trainer derives each rank's margin from "
                f"data.patch_shape (see domain.grid); remove it (got {self.data.tile_margin})"
            )
        if self.diffusion.scheduler in ("ve", "vp", "iddpm") and (
            self.diffusion.preconditioner != self.diffusion.scheduler
        ):
            raise ConfigError(
                f"config key 'diffusion.preconditioner': {self.diffusion.preconditioner!r} does "
                f"not match diffusion.scheduler {self.diffusion.scheduler!r}"
            )


def load_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """Read a YAML experiment file, apply ``section.key=value`` overrides, validate it all."""
    data = read_yaml(path) if path is not None else {}
    apply_overrides(data, list(overrides))
    if "data" not in data:
        raise ConfigError("config section 'data' is required")
    return from_dict(TrainConfig, data)
