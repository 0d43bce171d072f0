"""The experiment config of ``hpcdiff train``: one dataclass section per component.

Sections: ``run`` (here), ``data`` (:class:`hpcdiff.data.DataConfig`), ``model``,
``diffusion`` and ``objective`` (here), ``optim`` (here),
``dist``, ``zero``, ``ema``, ``checkpoint``, ``domain`` (:mod:`hpcdiff.distributed.config`),
``profiling`` and ``sample`` (here).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hpcdiff.config import ConfigError, apply_overrides, from_dict, read_yaml
from hpcdiff.config.checks import check_patch_grid, check_relative_path
from hpcdiff.data.config import DataConfig
from hpcdiff.distributed.config import (
    CheckpointConfig,
    DistConfig,
    DomainConfig,
    EMAConfig,
    ZeroConfig,
)
from hpcdiff.distributed.preempt import DEFAULT_STOP_SIGNALS, signal_of


@dataclass
class RunConfig:
    """Section ``run``: where results go, how long to train, how often to report."""

    # Run directory under run.out_dir: a relative path without `..`; rerunning a name resumes
    # its newest checkpoint (checkpoint.resume).
    name: str = "run"
    out_dir: str = "runs"  # parent of the run directories (absolute, or relative to the cwd)
    # Seed of the model initialisation (same on every rank), of the training noise (offset
    # per rank) and of the validation noise.
    seed: int = 0
    # Optimizer steps in total (a resumed run continues up to it); each step is
    # zero.grad_accum_steps micro-batches.
    steps: int = 1000
    log_every: int = 10  # log losses (mean over ranks) and throughput every N steps and at the end
    val_every: int = 0  # 0 disables periodic validation
    val_batches: int = 2  # batches per rank in each validation (same times and noise every time)
    progress: Literal["auto", "always", "never"] = "auto"  # tqdm bar on rank 0; auto: on a TTY
    tensorboard: bool = False  # scalars to `<run dir>/tensorboard` (needs the tensorboard package)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"  # `<run dir>/logs/rank*.log`
    # Signals that stop training gracefully: after the current optimizer step every rank
    # saves a checkpoint and exits with code 75 (docs/preemption.md). Names like SIGUSR2 or
    # USR2; SIGKILL and SIGSTOP cannot be caught. [] keeps every signal's default action.
    stop_signals: list[str] = field(default_factory=lambda: list(DEFAULT_STOP_SIGNALS))
    # After a stop signal: auto requeues a Slurm job (`scontrol requeue`) once the checkpoint
    # verifies if the job is still RUNNING (not cancelled, not past its time limit), and prints
    # the resume command otherwise; always requeues in any state and refuses to start outside
    # a Slurm job; never only prints the command.
    requeue: Literal["auto", "never", "always"] = "auto"

    def validate(self) -> None:
        for key in ("steps", "log_every", "val_batches"):
            if getattr(self, key) < 1:
                raise ConfigError(f"config key 'run.{key}' must be >= 1, got {getattr(self, key)}")
        if self.val_every < 0:
            raise ConfigError(f"config key 'run.val_every' must be >= 0, got {self.val_every}")
        check_relative_path(self.name, "run.name")  # the run writes only below run.out_dir
        for name in self.stop_signals:
            try:
                signal_of(name)
            except ValueError as err:
                raise ConfigError(f"config key 'run.stop_signals': {err}") from None

    @property
    def dir(self) -> Path:
        return Path(self.out_dir) / self.name


@dataclass
class OptimConfig:
    """Config section ``optim``."""

    lr: float = 2e-4  # AdamW learning rate after warm-up (the peak of every schedule)
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW decay rates of the moment estimates
    weight_decay: float = 0.0  # AdamW decoupled weight decay (0 disables it)
    eps: float = 1e-8  # AdamW term added to the denominator for numerical stability
    # Optimizer steps of linear warm-up, from lr / warmup_steps up to lr; 0 disables it.
    warmup_steps: int = 0
    # After warm-up: constant lr; cosine decay to min_lr_ratio x lr at run.steps; or
    # inverse_sqrt, lr x sqrt(max(warmup_steps, 1) / step) with steps counted from 1.
    schedule: Literal["constant", "cosine", "inverse_sqrt"] = "constant"
    min_lr_ratio: float = 0.0  # cosine floor, as a fraction of lr
    grad_clip: float = 0.0  # 0 disables clipping

    def validate(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"config key 'optim.lr' must be > 0, got {self.lr}")
        if self.warmup_steps < 0:
            raise ConfigError(
                f"config key 'optim.warmup_steps' must be >= 0, got {self.warmup_steps}"
            )
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(
                f"config key 'optim.min_lr_ratio' must be in [0, 1], got {self.min_lr_ratio}"
            )
        if self.grad_clip < 0:
            raise ConfigError(f"config key 'optim.grad_clip' must be >= 0, got {self.grad_clip}")


@dataclass
class ModelConfig:
    """Section ``model``: a named backbone size plus constructor overrides."""

    name: str = "SongUNet-S"  # see `hpcdiff models --list`
    args: dict[str, Any] = field(default_factory=dict)  # overrides of the named size
    # Global position of each patch, given to the backbone as extra input channels:
    # sinusoidal (fixed Fourier features of y, x), learnable (a trainable C x H x W table),
    # linear (y and x scaled to [-1, 1]) or null (none).
    positional_embedding: Literal["learnable", "sinusoidal", "linear"] | None = "sinusoidal"
    # Channels of the positional embedding: a multiple of 4 for sinusoidal, 2 for linear,
    # >= 1 for learnable; unused when model.positional_embedding is null.
    channels_positional_embedding: int = 4
    # Start a new run from these weights (fine-tuning): an hpcdiff .mdlus (`hpcdiff checkpoint
    # consolidate`, `hpcdiff sample`, Module.save) or a PhysicsNeMo .mdlus of SongUNet,
    # SongUNetPosEmbd or DiT; matched by name and shape to the part of the model of the same
    # class. Ignored when the run resumes from its own checkpoint.
    init_from: str | None = None
    # With model.init_from: true requires every weight of that part, and nothing else, in the
    # file; false loads what matches and reports the rest.
    init_strict: bool = True
    # torch.compile the preconditioned backbone for training (any zero.stage; kernels cached in
    # compile_cache/ of the run directory unless TORCHINDUCTOR_CACHE_DIR is set).
    compile: bool = False
    # The torch.compile backend: inductor generates fused kernels (the speed-up); aot_eager
    # captures the same graphs (forward and backward) and runs them without code generation,
    # which tells a graph-capture problem from an Inductor one and compiles in seconds.
    compile_backend: Literal["inductor", "aot_eager"] = "inductor"

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
        kind, channels = self.positional_embedding, self.channels_positional_embedding
        # MultiDiffusionModel2D's rule, checked here so that it fails before any data is read.
        allowed = {
            "sinusoidal": ("a multiple of 4 (>= 4)", channels >= 4 and channels % 4 == 0),
            "linear": ("2 (the y and x coordinates)", channels == 2),
            "learnable": (">= 1", channels >= 1),
        }
        if kind is not None and not allowed[kind][1]:
            raise ConfigError(
                f"config key 'model.channels_positional_embedding': {channels} does not fit "
                f"model.positional_embedding {kind!r}; allowed: {allowed[kind][0]}"
            )


@dataclass
class DiffusionConfig:
    """Section ``diffusion``: noise scheduler and preconditioner."""

    # Noise schedule: the noise levels and loss weights of training, the time steps of sampling.
    scheduler: Literal["edm", "edm_log_uniform", "ve", "vp", "iddpm", "student_t_edm"] = "edm"
    # Keyword arguments of the scheduler class (edm: sigma_min, sigma_max, rho, P_mean,
    # P_std); other names are rejected. Schedulers with a sigma_data (it sets the EDM loss
    # weight) get diffusion.sigma_data; a different value here is rejected.
    scheduler_args: dict[str, Any] = field(default_factory=dict)
    # Network preconditioning (Karras et al. 2022, Table 1); ve, vp and iddpm need the
    # scheduler of the same name.
    preconditioner: Literal["edm", "ve", "vp", "iddpm"] = "edm"
    # Std of the data for the preconditioner and the scheduler's loss weight (the stream
    # normalizes data to unit variance).
    sigma_data: float = 1.0

    def _scheduler_arg_names(self) -> tuple[str, list[str] | None]:
        """The scheduler class name and its keyword arguments (None: it takes any)."""
        import inspect

        from hpcdiff.experiment.build import _SCHEDULERS

        cls = _SCHEDULERS[self.scheduler]
        params = inspect.signature(cls).parameters.values()
        if any(p.kind is p.VAR_KEYWORD for p in params):
            return cls.__name__, None
        kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        return cls.__name__, [p.name for p in params if p.kind in kinds]

    def resolved_scheduler_args(self) -> dict[str, Any]:
        """``scheduler_args`` with ``sigma_data`` for schedulers that take it, so the loss
        weight and the preconditioner use the same data std."""
        _, names = self._scheduler_arg_names()
        if names is not None and "sigma_data" in names:
            return {"sigma_data": self.sigma_data, **self.scheduler_args}
        return dict(self.scheduler_args)

    def validate(self) -> None:
        if not self.scheduler_args:
            return
        cls, names = self._scheduler_arg_names()
        if names is None:
            return
        for key in self.scheduler_args:
            if key not in names:
                raise ConfigError(
                    f"config key 'diffusion.scheduler_args.{key}' is not an argument of "
                    f"{cls} (diffusion.scheduler {self.scheduler!r}); allowed: {names}"
                )
        given = self.scheduler_args.get("sigma_data", self.sigma_data)
        if given != self.sigma_data:
            raise ConfigError(
                f"config key 'diffusion.scheduler_args.sigma_data' ({given}) differs from "
                f"diffusion.sigma_data ({self.sigma_data}); set diffusion.sigma_data only"
            )


@dataclass
class ObjectiveConfig:
    """Section ``objective``: what the backbone learns (docs/downscaling.md)."""

    # diffusion: an ensemble generator (denoising score matching); regression: the conditional
    # mean E[target | condition] (MSE, one deterministic field per time: CorrDiff's first stage).
    kind: Literal["diffusion", "regression"] = "diffusion"
    # Residual diffusion (CorrDiff): the run directory of a trained regression run (same data
    # variables); the diffusion learns target - regression mean (normalized by its statistics,
    # <run dir>/residual_stats.json), sees the mean as extra condition channels, and sampling
    # adds the mean back. null: plain diffusion.
    regression_run: str | None = None
    # Regression means of training windows kept in memory (MiB per rank), computed once per
    # time; beyond it they are recomputed.
    mean_cache_mib: int = 1024

    def validate(self) -> None:
        if self.regression_run is not None and self.kind != "diffusion":
            raise ConfigError(
                "config key 'objective.regression_run' needs objective.kind diffusion, got "
                f"{self.kind!r}"
            )
        if self.mean_cache_mib < 0:
            raise ConfigError(
                f"config key 'objective.mean_cache_mib' must be >= 0, got {self.mean_cache_mib}"
            )


@dataclass
class ProfilingConfig:
    """Section ``profiling``: NVTX ranges (see ``hpcdiff.nvtx.RANGE_NAMES``) and a capture
    window of optimizer steps [start, stop) (see :mod:`hpcdiff.train.profile_window`).
    ``model_ranges`` adds ranges around backbone blocks (``model.enc.<i>``, ``model.dec.<i>``,
    ``model.block.<i>``) when ranges are on; off, no hook is registered."""

    # NVTX ranges (train.*, sample.*, data.*) plus DeepSpeed's, for Nsight Systems; the
    # environment variable HPCDIFF_NVTX=1 also turns them on.
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

    num_steps: int = 18  # solver steps from the highest noise level to the data
    # Solver name, a key of hpcdiff.diffusion.samplers.SOLVERS: euler, heun, dpmpp_2m,
    # edm_stochastic_heun, exponential_euler, adaptive, ... The default, DPM-Solver++(2M) with
    # 18 steps, costs 18 model evaluations per sample and matched the skill of 18-step EDM
    # stochastic Heun (36) in docs/performance.md.
    solver: str = "dpmpp_2m"
    ensemble: int = 2  # members per validation time (spread over the data-parallel groups)
    times: int = 1  # how many validation times to generate for
    overlap_pix: int = 8  # pixels shared by neighbouring patches of the sampling grid
    # Pixels of reflect padding at the domain edges; patch stride = data.patch_shape -
    # sample.overlap_pix - sample.boundary_pix.
    boundary_pix: int = 0
    # At most this many (patch, member) pairs per backbone call; null: all at once (most memory).
    chunk_size: int | None = None
    # Weights fusing overlapping patches: uniform (plain mean) or cosine (tapering towards
    # each patch edge, which hides seams: the default, see docs/downscaling.md).
    window: Literal["uniform", "cosine"] = "cosine"
    # Noise seed: noise is keyed by (seed, time, member, position), not by rank, so any
    # number of ranks draws the same samples.
    seed: int = 0
    domain_grid: tuple[int, int] = (1, 1)  # tiles (py, px) per sample; world = groups x py px
    # Backbone arithmetic: fp32, or bf16 / fp16 autocast (convolutions and matmuls in half
    # precision; the solver state, patch fusion and noise stay fp32). fp16 needs a CUDA device;
    # bf16 also runs on CPUs (slower there without native bf16 units). Skill change measured
    # in docs/performance.md.
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    # torch.compile the preconditioned backbone for sampling (kernels cached in compile_cache/
    # of the run directory unless TORCHINDUCTOR_CACHE_DIR is set; see docs/performance.md).
    compile: bool = False
    # The torch.compile backend for sampling, as model.compile_backend.
    compile_backend: Literal["inductor", "aot_eager"] = "inductor"

    def validate(self) -> None:
        from hpcdiff.diffusion.samplers import SOLVERS

        if self.solver not in SOLVERS:
            raise ConfigError(
                f"config key 'sample.solver': {self.solver!r} is not a solver; allowed: "
                f"{sorted(SOLVERS)}"
            )
        # num_steps: every scheduler's time grid needs at least two points (start and end)
        lowest = {"num_steps": 2, "ensemble": 1, "times": 1, "overlap_pix": 0, "boundary_pix": 0}
        for key, low in lowest.items():
            if getattr(self, key) < low:
                raise ConfigError(
                    f"config key 'sample.{key}' must be >= {low}, got {getattr(self, key)}"
                )
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ConfigError(
                f"config key 'sample.chunk_size' must be >= 1 or null, got {self.chunk_size}"
            )
        if min(self.domain_grid) < 1:
            grid = list(self.domain_grid)
            raise ConfigError(f"config key 'sample.domain_grid' must be [py, px] >= 1, got {grid}")


@dataclass
class TrainConfig:
    """The whole experiment."""

    data: DataConfig
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
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
        check_patch_grid(self.data.patch_shape, self.sample.overlap_pix, self.sample.boundary_pix)
        if self.data.tile_margin != 0:
            raise ConfigError(
                f"config key 'data.tile_margin': the trainer derives each rank's margin from "
                f"data.patch_shape (see domain.grid); remove it (got {self.data.tile_margin})"
            )
        if self.objective.regression_run is not None and (
            tuple(self.domain.grid) != (1, 1) or self.data.mode != "tile"
        ):
            raise ConfigError(
                "config key 'objective.regression_run': residual diffusion trains on whole "
                "grids (domain.grid [1, 1], data.mode tile), got domain.grid "
                f"{list(self.domain.grid)}, data.mode {self.data.mode!r}"
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
