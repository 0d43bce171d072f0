"""Domain-decomposed multi-diffusion sampling (MultiDiffusion, Bar-Tal et al. 2023, on tiles)
and ``hpcdiff sample`` on top of it.

The global state x_t (B, C, H, W) lives as tiles, one per rank of a domain group
(:class:`~hpcdiff.distributed.domain.DomainMesh`); the denoiser's x0 prediction (or guided
score) is that of :mod:`hpcdiff.generate.tiled`, and the solver update is pointwise, so
deterministic solvers give the single-process result for any rank count. Initial noise and
the noise of stochastic solvers (their ``noise_fn``) come from
:func:`~hpcdiff.distributed.domain.block_noise`, keyed by (seed, draw, block position), never
by rank; the adaptive solver's ``norm_fn`` measures the whole sample.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tensordict import TensorDict

from hpcdiff import nvtx
from hpcdiff.compiling import compile_network, use_run_cache
from hpcdiff.data.tiles import Tile
from hpcdiff.diffusion.multi_diffusion import MultiDiffusionPredictor
from hpcdiff.diffusion.samplers import SOLVERS, make_solver, sample
from hpcdiff.distributed.domain import (
    DomainDecomposedNoiseScheduler,
    DomainMesh,
    block_noise,
    sum_in_group,
)
from hpcdiff.distributed.profiling import forward_deepspeed_ranges
from hpcdiff.extras import available, install_hint
from hpcdiff.generate.tiled import (
    TiledMultiDiffusionDPSScorePredictor,
    TiledMultiDiffusionPredictor,
)
from hpcdiff.logs import close_logging, setup_logging

Tensor = torch.Tensor
log = logging.getLogger(__name__)


class BlockNoise:
    """``noise_fn`` of the stochastic solvers in tiled sampling: draw ``k`` (1, 2, ...) of a
    run is :func:`block_noise` of this rank's tile with ``stream=k``, keyed by (seed, draw,
    block), not by rank, so every tiling draws the same global noise."""

    def __init__(self, seeds: Sequence[int], tile: Tile) -> None:
        self.seeds, self.tile, self.draws = list(seeds), tile, 0

    def __call__(self, x: Tensor) -> Tensor:
        self.draws += 1
        C = x.shape[1]
        return block_noise(
            self.seeds, C, self.tile, dtype=x.dtype, device=x.device, stream=self.draws
        )


class GroupNorm:
    """``norm_fn`` of the adaptive solver in tiled sampling: the error norm over the whole
    sample (sum of squares and count of every tile of the domain group), so that every rank
    accepts, rejects and sizes the same steps and calls the tiled denoiser as often."""

    def __init__(self, mesh: DomainMesh) -> None:
        self.mesh = mesh

    def __call__(self, y: Tensor) -> float:
        sums = y.detach().double().square().flatten(1).sum(1)
        counts = torch.full_like(sums, y[0].numel())
        total = sum_in_group(torch.stack([sums, counts], dim=1), self.mesh)
        return float((total[:, 0] / total[:, 1]).sqrt().max())


class _StepRanges:
    """A solver whose steps are marked by the ``sample.step`` profiler range; ``on_step``
    (e.g. a progress bar's) is called after every step."""

    def __init__(self, solver: Any, on_step: Callable[[], None] | None = None) -> None:
        self.solver, self.on_step = solver, on_step

    def reset(self) -> None:
        reset = getattr(self.solver, "reset", None)
        if callable(reset):
            reset()

    def step(self, x: Tensor, t_cur: Tensor, t_next: Tensor) -> Tensor:
        with nvtx.range("sample.step"):
            x = self.solver.step(x, t_cur, t_next)
        if self.on_step is not None:
            self.on_step()
        return x


Tiled = TiledMultiDiffusionPredictor | TiledMultiDiffusionDPSScorePredictor


def _denoiser(predictor: MultiDiffusionPredictor | Tiled, mesh: DomainMesh, scheduler: Any):
    """(denoiser, patch model) of a plain, tiled or guided tiled predictor on ``mesh``."""
    if isinstance(predictor, MultiDiffusionPredictor):
        predictor = TiledMultiDiffusionPredictor(predictor, mesh)
    if isinstance(predictor, TiledMultiDiffusionDPSScorePredictor):
        tiled, kind = predictor.tiled, "score_predictor"
    elif isinstance(predictor, TiledMultiDiffusionPredictor):
        tiled, kind = predictor, "x0_predictor"
    else:
        raise TypeError(
            "predictor must be a MultiDiffusionPredictor, TiledMultiDiffusionPredictor or "
            f"TiledMultiDiffusionDPSScorePredictor, got {type(predictor).__name__}"
        )
    if tiled.mesh != mesh:
        raise ValueError(f"the predictor is tiled for {tiled.mesh}, not for {mesh}")
    return scheduler.get_denoiser(**{kind: predictor}), tiled.predictor.model


_AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def precision_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype of ``sample.precision`` on ``device`` (None: fp32); ConfigError for a
    precision this device cannot run."""
    from hpcdiff.config import ConfigError

    if precision not in _AUTOCAST:
        raise ConfigError(f"config key 'sample.precision': {precision!r} is not one of "
                          f"{sorted(_AUTOCAST)}")  # fmt: skip
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(
            f"config key 'sample.precision': fp16 autocast needs a CUDA device, but sampling "
            f"runs on {device.type}; use bf16 or fp32"
        )
    return _AUTOCAST[precision]


@torch.no_grad()
def sample_tiled(
    predictor: MultiDiffusionPredictor | Tiled, mesh: DomainMesh, scheduler: Any,
    seeds: Sequence[int], channels: int, num_steps: int, solver: str = "heun",
    solver_options: dict[str, Any] | None = None, on_step: Callable[[], None] | None = None,
    precision: str = "fp32",
) -> Tensor:  # fmt: skip
    """This rank's tile (E, C, h, w) of E = len(seeds) samples drawn with ``solver`` from
    x_N of :meth:`DomainDecomposedNoiseScheduler.init_latents`. ``predictor``: a configured
    ``MultiDiffusionPredictor`` (tiled here), a :class:`TiledMultiDiffusionPredictor`, or a
    :class:`TiledMultiDiffusionDPSScorePredictor` (guided). Deterministic solvers give
    single-process ``sample()`` on the full grid; stochastic EDM solvers draw block noise,
    so their samples do not depend on the tiling either. ``on_step`` is called after every
    solver step (progress). ``precision`` bf16 / fp16 runs the model under autocast
    (:func:`precision_dtype`); x_t, the fuse and the solver stay in x's float32."""
    if solver not in SOLVERS:
        raise ValueError(f"Unknown solver '{solver}'. Available solvers: {sorted(SOLVERS)}.")
    if isinstance(scheduler, DomainDecomposedNoiseScheduler):
        scheduler = scheduler.inner_scheduler
    tiles = DomainDecomposedNoiseScheduler(scheduler, mesh, seeds)
    denoiser, model = _denoiser(predictor, mesh, scheduler)
    norm_fn = GroupNorm(mesh) if mesh.domain_size > 1 else None
    noise_fn = BlockNoise(seeds, mesh.tile)
    solver_ = make_solver(
        solver, denoiser, scheduler, solver_options, noise_fn=noise_fn, norm_fn=norm_fn
    )
    stepper = _StepRanges(solver_, on_step)
    device = next(model.parameters()).device
    tN = tiles.timesteps(num_steps, device=device)[0].expand(len(seeds))
    xN = tiles.init_latents((channels, *mesh.shape), tN)
    dtype = precision_dtype(precision, device)
    with nvtx.range("sample"), torch.autocast(device.type, dtype, enabled=dtype is not None):
        return sample(denoiser, xN, tiles, num_steps, solver=stepper)


def _members(ensemble: int, mesh: DomainMesh) -> range:
    """Ensemble members sampled by this rank's data group: g, g + G, g + 2 G, ..."""
    return range(mesh.data_group, ensemble, mesh.data_groups)


def _tiled_mean(regression: Any, cond: TensorDict | None, mesh: DomainMesh, C: int, p: dict):
    """This rank's tile (1, C, h, w) of the regression mean: the fused patch grid ``p``
    (:func:`~hpcdiff.experiment.residual.sampling_patching`), equal to the single-process
    fuse for any tiling."""
    from hpcdiff.experiment.regression import fused_predictor

    tiled = TiledMultiDiffusionPredictor(fused_predictor(regression.model, p), mesh, condition=cond)
    device = next(regression.parameters()).device
    zeros = torch.zeros(1, C, *mesh.tile.shape, device=device)
    return tiled(zeros, torch.zeros(1, device=device))


def _members_of_time(objective: Any, cfg: Any, cond: Tensor | None, seeds: list[int], C: int,
                     mesh: DomainMesh, residual: Any, on_step) -> tuple:  # fmt: skip
    """This rank's tiles (E_g, C, h, w) of the members of one time (a regression run's: its
    mean), and of a residual run's regression mean (1, C, h, w) (None for other runs)."""
    from hpcdiff.experiment.regression import RegressionObjective, fused_predictor
    from hpcdiff.experiment.residual import sampling_patching

    s, E = cfg.sample, len(seeds)

    def condition(tensor: Tensor | None, batch: int) -> TensorDict | None:
        if tensor is None:
            return None
        return TensorDict({"condition": tensor.expand(batch, -1, -1, -1)}, batch_size=[batch])

    if isinstance(objective, RegressionObjective):  # every member is the mean
        mean = _tiled_mean(objective, condition(cond, 1), mesh, C, sampling_patching(s))
        return mean.expand(E, -1, -1, -1), None
    mean = None
    if residual is not None:
        regression, (m, sd), patching = residual
        mean = _tiled_mean(regression, condition(cond, 1), mesh, C, patching)
        cond = mean if cond is None else torch.cat([cond, mean], dim=1)
    pred = fused_predictor(objective.model, sampling_patching(s))
    tiled = TiledMultiDiffusionPredictor(pred, mesh, condition=condition(cond, E))
    x = sample_tiled(tiled, mesh, objective.scheduler, seeds, C, s.num_steps, s.solver,
                     on_step=on_step, precision=s.precision)  # fmt: skip
    if mean is not None:  # x = s r + m + mu(c)
        x = x * sd.to(x).view(1, -1, 1, 1) + m.to(x).view(1, -1, 1, 1) + mean
    return x, mean


def _residual(cfg: Any, run_dir: Path, device: torch.device) -> Any:
    """(regression objective, (m, s), patch grid of the mean) of a residual run (None
    otherwise), from the snapshot and statistics its training left in ``run_dir``."""
    from hpcdiff.core import Module
    from hpcdiff.experiment.residual import SNAPSHOT, read_stats

    if cfg.objective.regression_run is None:
        return None
    regression = Module.from_checkpoint(run_dir / SNAPSHOT).train(False).to(device)
    stats, patching = read_stats(run_dir, cfg.sample)
    return regression, (torch.tensor(stats["mean"]), torch.tensor(stats["std"])), patching


def _sample_valid_times(objective: Any, cfg: Any, device: torch.device, residual=None) -> tuple:
    """This rank's tiles (E_g, C, h, w) of the first ``sample.times`` validation times, with
    its tiles of the truth and of the regression mean (residual runs), the
    time indices, the target source and the mesh. Every rank reads only its tile of the
    target and the condition."""
    from hpcdiff.data import DataStream
    from hpcdiff.data.stream import open_sources
    from hpcdiff.experiment.conditioning import condition_of
    from hpcdiff.progress import SamplingProgress

    s = cfg.sample
    data_cfg = dataclasses.replace(cfg.data, batch_size=1, prefetch=1, workers=0, mode="tile",
                                   tile_margin=0)  # fmt: skip
    sources = open_sources(data_cfg)
    mesh = DomainMesh.from_process_group(s.domain_grid, sources["target"].shape)
    members = _members(s.ensemble, mesh)
    tiles, truths, means, times = [], [], [], []
    stream = DataStream(data_cfg, split="valid", tile=mesh.tile, sources=sources)
    progress = SamplingProgress(s.num_steps, items=s.times, rank=mesh.rank, mode=cfg.run.progress)
    with contextlib.closing(stream), progress:
        for _, batch in zip(range(s.times), stream):
            time = int(batch.time_index[0])
            seeds = [(s.seed * 1_000_003 + time) * 1_000_003 + e for e in members]
            cond = condition_of(batch.to(device))
            x, mean = _members_of_time(objective, cfg, cond, seeds, batch.data.shape[1], mesh,
                                       residual, progress.on_step)  # fmt: skip
            log.info("time %d: %d members sampled on tile %s", time, len(seeds), mesh.tile)
            tiles.append(x.cpu().numpy())
            truths.append(np.where(batch.mask[0].numpy(), batch.data[0].numpy(), np.nan))
            means.append(None if mean is None else mean[0].cpu().numpy())
            times.append(time)
    means = None if means[0] is None else means
    return tiles, truths, means, times, sources["target"], mesh


def generate_distributed(run_dir: Path, cfg: Any) -> dict:
    """``hpcdiff sample`` on ``world = data groups x sample.domain_grid`` ranks: each domain
    group samples members g, g + G, ... of every time with :func:`sample_tiled`, and every
    rank writes its tiles (the first data group also the truth) into
    ``<run>/samples/samples.nc``, which rank 0 lays out and finally plots."""
    from hpcdiff.data.normalize import Normalizer
    from hpcdiff.distributed import find_latest
    from hpcdiff.distributed.runtime import init_distributed, shutdown
    from hpcdiff.experiment.residual import consolidated_model
    from hpcdiff.generate.output import SamplesFile, plot_file

    ctx, s = init_distributed(cfg.dist), cfg.sample
    precision_dtype(s.precision, ctx.device)  # before any work
    setup_logging(run_dir, ctx.env.rank, cfg.run.log_level)  # <run>/logs/rank{rank:05d}.log
    nvtx.configure(cfg.profiling, ctx.device)  # before the model is built (block ranges)
    forward_deepspeed_ranges()  # while ranges are on: DeepSpeed's, in domain DeepSpeed
    ckpt = find_latest(run_dir / cfg.checkpoint.dir)  # collective: verified on all ranks
    if ckpt is None:
        raise FileNotFoundError(f"{run_dir / cfg.checkpoint.dir}: no complete checkpoint")
    model = consolidated_model(ckpt, run_dir / "model.mdlus").to(ctx.device)
    if s.compile:
        use_run_cache(run_dir)
        compile_network(model.model, s.compile_backend)
    residual = _residual(cfg, run_dir, ctx.device)
    tiles, truths, means, times, source, mesh = _sample_valid_times(model, cfg, ctx.device,
                                                                    residual)  # fmt: skip
    norm = Normalizer.from_file(
        cfg.data.stats_file, "target", cfg.data.variables, cfg.data.log1p_variables
    )
    ens = norm.denormalize(np.stack(tiles, axis=1), axis=2)  # (E_g, T, C, h, w)
    truth = norm.denormalize(np.stack(truths), axis=1)  # (T, C, h, w)
    mean = None if means is None else norm.denormalize(np.stack(means), axis=1)  # (T, C, h, w)
    out_dir, variables = run_dir / "samples", list(cfg.data.variables)
    out_dir.mkdir(exist_ok=True)
    out = SamplesFile(out_dir / "samples.nc", variables, source, mesh.shape,
                      regression=mean is not None)  # fmt: skip
    out.write(ctx.env.rank, mesh.world, s.ensemble, times, ens, truth, mesh.tile,
              _members(s.ensemble, mesh), truth_too=mesh.data_group == 0,
              regression=mean)  # fmt: skip
    result = {"netcdf": str(out.path), "times": times, "ensemble": s.ensemble,
              "domain_grid": list(mesh.grid), "world": mesh.world}  # fmt: skip
    if ctx.env.rank == 0:
        if available("matplotlib"):
            result["plots"] = [str(p) for p in plot_file(out.path, out_dir, variables)]
        else:  # the samples file is the product; the PNGs are quick-looks
            log.warning("no quick-look PNGs: they need %s", install_hint("matplotlib"))
        (out_dir / "summary.json").write_text(json.dumps(result, indent=1))
    log.info("samples written to %s", out.path)
    close_logging()
    shutdown()  # collective: every rank got here
    return result
