"""Domain-decomposed multi-diffusion sampling (MultiDiffusion, Bar-Tal et al. 2023, on tiles).

The global state x_t (B, C, H, W) lives as tiles, one per rank of a domain group
(:class:`~hpcdiff.distributed.domain.DomainMesh`). Per denoiser evaluation each rank

1. gathers the halo its patches need (values of x_t only, ``comm.halo``),
2. denoises the grid patches it owns: patch (iy, ix) belongs to the tile holding its anchor
   ``clamp(origin - boundary_pix, 0, L - 1)`` per axis, so every patch runs exactly once,
3. adds them, weighted by window / global weight map as in ``GridPatching2D.fuse``, into a
   buffer over the image region its patches cover,
4. sends the parts of that buffer lying in other tiles to their owners (``comm.halo``).

The sum on each tile is then the single-process fuse, and the solver update is pointwise, so
deterministic solvers give the single-process result for any rank count. Initial noise comes
from :func:`block_noise`, keyed by (seed, block position), never by rank.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from tensordict import TensorDict

from hpcdiff import nvtx
from hpcdiff.data.tiles import Tile
from hpcdiff.diffusion._tensor import bcast
from hpcdiff.diffusion.multi_diffusion import MultiDiffusionPredictor
from hpcdiff.diffusion.multi_diffusion._grid import accum_dtype
from hpcdiff.diffusion.samplers import SOLVERS, sample
from hpcdiff.diffusion.samplers._churn import EDMChurn
from hpcdiff.distributed.domain import DomainMesh, gather_region, intersect, reduce_regions

Tensor = torch.Tensor
NOISE_BLOCK = 64


def _block_seed(seed: int, stream: int, by: int, bx: int) -> int:
    """A 63-bit generator seed for noise block (by, bx) of draw ``stream`` of sample ``seed``."""
    state = np.random.SeedSequence([int(seed), stream, by, bx]).generate_state(2, np.uint64)
    return int(state[0]) & (2**63 - 1)


def block_noise(
    seeds: Sequence[int], channels: int, tile: Tile, block: int = NOISE_BLOCK,
    dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu", stream: int = 0,
) -> Tensor:  # fmt: skip
    """Standard normal noise (E, C, h, w) on ``tile`` of the global grid, E = len(seeds): each
    (block x block) square of the global grid draws from its own generator seeded by (seed,
    ``stream``, block row, block col), so any decomposition yields the same global field;
    ``stream`` numbers the draws of one sampling run (0: initial latents)."""
    out = torch.empty((len(seeds), channels, *tile.shape), dtype=dtype)
    for by in range(tile.row0 // block, -(-tile.row1 // block)):
        for bx in range(tile.col0 // block, -(-tile.col1 // block)):
            square = Tile.at((by * block, bx * block), (block, block))
            part = intersect(square, tile)
            src, dst = part.relative_to(square).slices(), part.relative_to(tile).slices()
            for e, seed in enumerate(seeds):
                gen = torch.Generator().manual_seed(_block_seed(seed, stream, by, bx))
                z = torch.randn((channels, block, block), generator=gen, dtype=dtype)
                out[e, :, dst[0], dst[1]] = z[:, src[0], src[1]]
    return out.to(device)


class AxisPlan(NamedTuple):
    """Along one axis: owned patches [i0, i1), the image range ``need`` their reflect-padded
    window reads (``index``: window position -> offset in ``need``), and the image range
    ``cover`` their in-image parts cover."""

    i0: int
    i1: int
    need: tuple[int, int]
    index: Tensor
    cover: tuple[int, int]


def _axis_plan(lo: int, hi: int, L: int, size: int, stride: int, b: int) -> AxisPlan | None:
    """The :class:`AxisPlan` of tile range [lo, hi); None when the tile anchors no patch."""
    n = math.ceil(L / stride)
    anchors = [min(max(i * stride - b, 0), L - 1) for i in range(n)]
    owned = [i for i, a in enumerate(anchors) if lo <= a < hi]
    if not owned:
        return None
    i0, i1 = owned[0], owned[-1] + 1
    q = torch.arange(i0 * stride, (i1 - 1) * stride + size) - b  # image coords of the window
    q = q.abs()
    q = torch.where(q > L - 1, 2 * (L - 1) - q, q)  # reflect into [0, L)
    n0, n1 = int(q.min()), int(q.max()) + 1
    f0, f1 = max(i0 * stride - b, 0), min((i1 - 1) * stride + size - b, L)
    return AxisPlan(i0, i1, (n0, n1), q - n0, (f0, f1))


class TiledMultiDiffusionPredictor:
    """x0-predictor on this rank's tile (B, C, h, w) of the global state, equal to the tile of
    ``MultiDiffusionPredictor(x, t)`` on the full state (halo exchange inside).

    Parameters
    ----------
    predictor : MultiDiffusionPredictor
        Configured with ``set_patching``; its model, condition, positional embedding and
        ``chunk_size`` (patch rows per model call) are used as they are.
    mesh : DomainMesh
        This rank's place in the domain group; ``mesh.shape`` is the global (H, W).
    """

    def __init__(self, predictor: MultiDiffusionPredictor, mesh: DomainMesh) -> None:
        patching = predictor._patching
        if patching is None:
            raise RuntimeError("call predictor.set_patching(...) before tiling it")
        if tuple(patching.img_shape) != tuple(mesh.shape):
            raise ValueError(
                f"mesh.shape {tuple(mesh.shape)} does not match the predictor's global shape "
                f"{tuple(patching.img_shape)}"
            )
        self.predictor, self.mesh, self.patching = predictor, mesh, patching
        b, size = patching.boundary_pix, patching.patch_shape
        self.stride = tuple(p - patching.overlap_pix - b for p in size)
        (H, W), (sy, sx) = mesh.shape, self.stride
        self.plans = [
            (
                _axis_plan(t.row0, t.row1, H, size[0], sy, b),
                _axis_plan(t.col0, t.col1, W, size[1], sx, b),
            )
            for t in mesh.tiles
        ]
        self.need = [self._region(py, px, "need") for py, px in self.plans]
        self.cover = [self._region(py, px, "cover") for py, px in self.plans]
        self.ny = math.ceil(mesh.shape[0] / self.stride[0])

    @staticmethod
    def _region(py: AxisPlan | None, px: AxisPlan | None, kind: str) -> Tile | None:
        if py is None or px is None:
            return None
        (r0, r1), (c0, c1) = getattr(py, kind), getattr(px, kind)
        return Tile(r0, r1, c0, c1)

    def _patch_rows(self, x: Tensor, t: Tensor, window: Tensor, ix: int, iy0: int, iy1: int):
        """x0 of patches iy0 <= iy < iy1 of grid column ix: rows [start, stop) of the patched
        global tensor, with the model and conditions of the wrapped predictor."""
        pred, B = self.predictor, x.shape[0]
        plan_y, plan_x = self.plans[self.mesh.domain_rank]
        py0, px0 = plan_y.i0, plan_x.i0
        (Hp, Wp), (sy, sx) = self.patching.patch_shape, self.stride
        with nvtx.range("patch.extract"):
            col = window[..., (ix - px0) * sx : (ix - px0) * sx + Wp]  # (B, C, Lp, Wp)
            col = col[:, :, (iy0 - py0) * sy : (iy1 - 1 - py0) * sy + Hp]
            x_c = col.unfold(2, Hp, sy).permute(2, 0, 1, 4, 3)  # (n, B, C, Hp, Wp)
            x_c = x_c.reshape(-1, x.shape[1], Hp, Wp)
        start = (ix * self.ny + iy0) * B
        stop = start + x_c.shape[0]
        t_c = t[torch.arange(start, stop, device=t.device) % B]
        with nvtx.range("model.forward"):
            out = pred._call_model(x_c, t_c, pred._condition_rows(start, stop, B))
        return start, pred._to_x0(out, x_c, t_c)

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        """Tile (B, C, h, w) of the fused x0 prediction for this rank's tile ``x``."""
        mesh, me = self.mesh, self.mesh.domain_rank
        if tuple(x.shape[-2:]) != mesh.tile.shape:
            raise ValueError(f"x must cover tile {mesh.tile}, got shape {tuple(x.shape)}")
        with nvtx.range("sample.denoise"):
            region = gather_region(x, mesh, self.need)
            plan_y, plan_x = self.plans[me]
            acc = None
            if region.numel():
                with nvtx.range("patch.extract"):  # reflect-padded window of owned patches
                    rows, cols = plan_y.index.to(x.device), plan_x.index.to(x.device)
                    window = region.index_select(2, rows).index_select(3, cols)
                cover = self.cover[me]
                acc = x.new_zeros((*x.shape[:2], *cover.shape), dtype=accum_dtype(x.dtype))
                for ix in range(plan_x.i0, plan_x.i1):
                    for iy0, iy1 in self._chunks(plan_y.i0, plan_y.i1, x.shape[0]):
                        start, x0 = self._patch_rows(x, t, window, ix, iy0, iy1)
                        with nvtx.range("patch.fuse"):
                            self.patching.accumulate(acc, x0, start, cover.origin)
            out = x.new_zeros(x.shape, dtype=accum_dtype(x.dtype))
            return reduce_regions(acc, mesh, self.cover, out)

    def _chunks(self, i0: int, i1: int, B: int):
        """Split patches [i0, i1) of a column into groups of at most chunk_size // B."""
        rows = self.predictor._chunk_size
        k = i1 - i0 if rows is None else max(1, rows // B)
        return [(a, min(a + k, i1)) for a in range(i0, i1, k)]


class _BlockNoise:
    """Mixin for the EDM stochastic solvers: every noise draw (``EDMChurn._randn``: churn,
    exponential noise) is :func:`block_noise` on the tile, keyed by (seed, draw number,
    block), not by rank."""

    _noise_seeds: Sequence[int]
    _noise_tile: Tile
    _draws: int = 0

    def _randn(self, x: Tensor) -> Tensor:
        self._draws += 1
        C, tile = x.shape[1], self._noise_tile
        return block_noise(self._noise_seeds, C, tile, dtype=x.dtype, device=x.device,
                           stream=self._draws)  # fmt: skip


def _make_solver(name: str, denoiser: Any, scheduler: Any, options: dict[str, Any] | None,
                 seeds: Sequence[int], tile: Tile) -> Any:  # fmt: skip
    """Solver ``name`` as :func:`sample` builds it; stochastic ones draw block noise."""
    cls = SOLVERS[name]
    defaults = getattr(cls, "scheduler_defaults", None)
    options = {**(defaults(scheduler) if defaults else {}), **(options or {})}
    if not issubclass(cls, EDMChurn):
        return cls(denoiser, **options)
    solver = type(f"Tiled{cls.__name__}", (_BlockNoise, cls), {})(denoiser, **options)
    solver._noise_seeds, solver._noise_tile = list(seeds), tile
    return solver


class _StepRanges:
    """A solver whose steps are marked by the ``sample.step`` profiler range."""

    def __init__(self, solver: Any) -> None:
        self.solver = solver

    def reset(self) -> None:
        reset = getattr(self.solver, "reset", None)
        if callable(reset):
            reset()

    def step(self, x: Tensor, t_cur: Tensor, t_next: Tensor) -> Tensor:
        with nvtx.range("sample.step"):
            return self.solver.step(x, t_cur, t_next)


def initial_latents(scheduler: Any, num_steps: int, seeds: Sequence[int], channels: int,
                    tile: Tile) -> Tensor:  # fmt: skip
    """x_N = sigma(t_N) eps on ``tile`` (E, C, h, w), eps from :func:`block_noise`."""
    from hpcdiff.diffusion.noise_schedulers import LinearGaussianNoiseScheduler

    if type(scheduler).init_latents is not LinearGaussianNoiseScheduler.init_latents:
        raise ValueError(
            f"{type(scheduler).__name__} draws non-Gaussian initial latents; tiled sampling "
            "supports schedulers with Gaussian latents"
        )
    tN = scheduler.timesteps(num_steps)[0].expand(len(seeds))
    eps = block_noise(seeds, channels, tile)
    return eps * bcast(scheduler.sigma(tN), eps)


@torch.no_grad()
def sample_tiled(
    predictor: MultiDiffusionPredictor, mesh: DomainMesh, scheduler: Any, seeds: Sequence[int],
    channels: int, num_steps: int, solver: str = "heun",
    solver_options: dict[str, Any] | None = None,
) -> Tensor:  # fmt: skip
    """This rank's tile (E, C, h, w) of E = len(seeds) samples drawn with ``solver`` from the
    noise of :func:`initial_latents`; identical to single-process ``sample()`` with
    ``predictor`` on the full grid for deterministic solvers; stochastic EDM solvers draw
    their noise from :func:`block_noise` too, so their samples do not depend on the tiling."""
    if solver not in SOLVERS:
        raise ValueError(f"Unknown solver '{solver}'. Available solvers: {sorted(SOLVERS)}.")
    denoiser = scheduler.get_denoiser(x0_predictor=TiledMultiDiffusionPredictor(predictor, mesh))
    stepper = _StepRanges(
        _make_solver(solver, denoiser, scheduler, solver_options, seeds, mesh.tile)
    )
    device = next(predictor.model.parameters()).device
    xN = initial_latents(scheduler, num_steps, seeds, channels, mesh.tile).to(device)
    with nvtx.range("sample"):
        return sample(denoiser, xN, scheduler, num_steps, solver=stepper)


def _members(ensemble: int, mesh: DomainMesh) -> list[int]:
    """Ensemble members sampled by this rank's data group: g, g + G, g + 2 G, ..."""
    return list(range(mesh.data_group, ensemble, mesh.data_groups))


def _write_tiles(path: Path, ens: np.ndarray, members: list[int], mesh: DomainMesh,
                 variables: list[str]) -> None:  # fmt: skip
    """Each rank in turn writes its tile ``ens`` (E_g, T, C, h, w) of its members into the
    file rank 0 created: no rank ever holds the global ensemble."""
    import netCDF4

    from hpcdiff.distributed.collectives import barrier

    rows, cols = mesh.tile.slices()
    for turn in range(mesh.world):
        if turn == mesh.rank and members:
            with netCDF4.Dataset(path, "a") as nc:
                for c, name in enumerate(variables):
                    nc[name][members, :, rows, cols] = ens[:, :, c]
        barrier()


def _load_collectively(ckpt: Path, output: Path, rank: int) -> Any:
    """The consolidated trained objective on every rank (consolidation verifies the checkpoint
    collectively, so all ranks run it; only rank 0 writes ``output``, the others a temp file)."""
    from hpcdiff.distributed import consolidate_checkpoint
    from hpcdiff.train.build import DiffusionObjective

    with tempfile.TemporaryDirectory() as tmp:
        path = output if rank == 0 else Path(tmp) / output.name
        consolidate_checkpoint(ckpt, path, weights="auto")
        return DiffusionObjective.from_checkpoint(path).train(False)


def _sample_valid_times(objective: Any, cfg: Any, device: torch.device) -> tuple:
    """This rank's tiles (E_g, C, h, w) of the first ``sample.times`` validation times, with
    the truths, time indices, target source and the mesh."""
    from hpcdiff.data import DataStream
    from hpcdiff.train.loop import condition_of

    s = cfg.sample
    data_cfg = dataclasses.replace(cfg.data, batch_size=1, prefetch=1, workers=0)
    tiles, truths, times, mesh = [], [], [], None
    with contextlib.closing(DataStream(data_cfg, split="valid")) as stream:
        for _, batch in zip(range(s.times), stream):
            mesh = DomainMesh.from_process_group(s.domain_grid, batch.data.shape[-2:])
            members = _members(s.ensemble, mesh)
            time = int(batch.time_index[0])
            seeds = [(s.seed * 1_000_003 + time) * 1_000_003 + e for e in members]
            cond = condition_of(batch.to(device))
            if cond is not None:
                cond = TensorDict({"condition": cond.expand(len(seeds), -1, -1, -1)},
                                  batch_size=[len(seeds)])  # fmt: skip
            pred = MultiDiffusionPredictor(objective.model, cond, chunk_size=s.chunk_size)
            pred.set_patching(s.overlap_pix, s.boundary_pix, window=s.window)
            C = batch.data.shape[1]
            x = sample_tiled(pred, mesh, objective.scheduler, seeds, C, s.num_steps, s.solver)
            tiles.append(x.cpu().numpy())
            truths.append(np.where(batch.mask[0].numpy(), batch.data[0].numpy(), np.nan))
            times.append(time)
        source = stream.sources["target"]
    return tiles, truths, times, source, mesh


def generate_distributed(run_dir: Path, cfg: Any) -> dict:
    """``hpcdiff sample`` on ``world = data groups x sample.domain_grid`` ranks: each domain
    group samples members g, g + G, ... of every time with :func:`sample_tiled`, and every
    rank writes its tiles into ``<run>/samples/samples.nc``, which rank 0 creates (with the
    truth) and finally plots."""
    from hpcdiff.data.normalize import Normalizer
    from hpcdiff.distributed import find_latest
    from hpcdiff.distributed.collectives import barrier
    from hpcdiff.distributed.runtime import init_distributed, shutdown
    from hpcdiff.generate.output import plot_samples, write_netcdf

    ctx, s = init_distributed(cfg.dist), cfg.sample
    ckpt = find_latest(run_dir / cfg.checkpoint.dir)  # collective: verified on all ranks
    if ckpt is None:
        raise FileNotFoundError(f"{run_dir / cfg.checkpoint.dir}: no complete checkpoint")
    objective = _load_collectively(ckpt, run_dir / "model.mdlus", ctx.env.rank).to(ctx.device)
    tiles, truths, times, source, mesh = _sample_valid_times(objective, cfg, ctx.device)
    norm = Normalizer.from_file(
        cfg.data.stats_file, "target", cfg.data.variables, cfg.data.log1p_variables
    )
    ens = norm.denormalize(np.stack(tiles, axis=1), axis=2)  # (E_g, T, C, h, w)
    out_dir, variables = run_dir / "samples", list(cfg.data.variables)
    path = out_dir / "samples.nc"
    if ctx.env.rank == 0:
        out_dir.mkdir(exist_ok=True)
        truth = norm.denormalize(np.stack(truths), axis=1)  # (T, C, H, W)
        shape = (s.ensemble, *truth.shape[:2], *mesh.shape)
        write_netcdf(path, np.broadcast_to(np.float32(np.nan), shape), truth, times,
                     variables, source)  # fmt: skip
    barrier()
    _write_tiles(path, ens, _members(s.ensemble, mesh), mesh, variables)
    result = {"netcdf": str(path), "times": times, "ensemble": s.ensemble,
              "domain_grid": list(mesh.grid), "world": mesh.world}  # fmt: skip
    if ctx.env.rank == 0:
        result["plots"] = [str(p) for p in _plot(path, out_dir, variables, plot_samples)]
        (out_dir / "summary.json").write_text(json.dumps(result, indent=1))
    shutdown()  # collective: every rank got here
    return result


def _plot(path: Path, out_dir: Path, variables: list[str], plot_samples: Any) -> list[Path]:
    """Quick-look PNGs of the written file (rank 0 reads it back)."""
    import netCDF4

    with netCDF4.Dataset(path) as nc:
        ens = np.stack([np.asarray(nc[v][:]) for v in variables], axis=2)  # (E, T, C, H, W)
        truth = np.stack([np.asarray(nc[f"{v}_truth"][:]) for v in variables], axis=1)
    return plot_samples(out_dir, ens, truth, variables)
