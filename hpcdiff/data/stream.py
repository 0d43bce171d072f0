"""The per-rank training stream: NetCDF windows -> normalized torch batches, in the background.

Each rank reads only what it trains on: the time indices of its data-parallel group (see
:mod:`hpcdiff.data.sampler`) and, per time step, either

* ``mode: tile``: its tile of the domain grown by ``tile_margin`` (one large read per variable
  and time step; every sample of a batch has the same window), or
* ``mode: patch``: a random window aligned to the HDF5 chunks (inside the tile, if given),
  sized to cover ``patch_shape``; aligned windows decode no partial chunks (2.4x faster than
  unaligned reads of zlib data, ``MEASUREMENTS.md``).

Reads run in a background thread (``workers: 0``) or in worker processes, at most
``prefetch`` batches ahead. Rank, data-parallel group and tile are plain arguments: this
module imports no distributed library.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Mapping

import numpy as np
import torch

from hpcdiff.data.batch import Batch, PatchBatch, cut_patches
from hpcdiff.data.cf import format_time
from hpcdiff.data.config import DataConfig, resolve_files
from hpcdiff.data.errors import DataError
from hpcdiff.data.loader import BatchTask, Group, SampleReader
from hpcdiff.data.normalize import Normalizer
from hpcdiff.data.plan import WindowPlan, window_shape
from hpcdiff.data.prefetch import ProcessPrefetcher, ThreadPrefetcher
from hpcdiff.data.reader import GridSource
from hpcdiff.data.regrid import regridder_for
from hpcdiff.data.sampler import TimeSampler
from hpcdiff.data.tiles import Tile


def open_sources(cfg: DataConfig) -> dict[str, GridSource]:
    """The target, condition and static grids of ``cfg``, validated (files opened once)."""
    out = {
        "target": GridSource(
            resolve_files(cfg.files, "files"),
            cfg.variables,
            dims=cfg.dims,
            name="target",
            levels=cfg.levels,
        )
    }
    if cfg.condition_files:
        paths = resolve_files(cfg.condition_files, "condition_files")
        out["condition"] = GridSource(
            paths, cfg.condition_variables, dims=cfg.dims, name="condition", levels=cfg.levels
        )
    if cfg.static_files:
        paths = resolve_files(cfg.static_files, "static_files")
        out["static"] = GridSource(
            paths,
            cfg.static_variables,
            dims=cfg.dims,
            timed=False,
            name="static",
            levels=cfg.levels,
        )
    return out


def condition_time_map(target: GridSource, condition: GridSource, needed: np.ndarray):
    """Index of each target time in the condition files (-1 where absent; ``needed`` checked)."""
    if condition.calendar != target.calendar:
        raise DataError(
            f"condition calendar {condition.calendar!r} differs from target {target.calendar!r}",
            path=condition.files[0].path,
        )
    pos = np.zeros(target.n_times, dtype=np.int64)
    found = np.zeros(target.n_times, dtype=bool)
    if condition.n_times:
        pos = np.clip(np.searchsorted(condition.times, target.times), 0, condition.n_times - 1)
        found = np.abs(condition.times[pos] - target.times) < 0.5
    missing = [t for t in needed if not found[t]]
    if missing:
        t = int(missing[0])
        raise DataError(
            f"target time {format_time(target.times[t], target.calendar)} is not in the "
            f"condition files ({len(missing)} times missing)",
            path=condition.files[0].path,
            variable=condition.variables[0],
            index=f"target time {t}",
        )
    return np.where(found, pos, -1)


def _stop(running: dict) -> None:
    prefetcher = running.pop("prefetcher", None)
    if prefetcher is not None:
        prefetcher.close()


class DataStream:
    """Iterator of :class:`Batch` for one rank; resumable with ``state_dict``.

    Parameters
    ----------
    cfg : the ``data:`` section.
    split : 'train' (shuffled, endless) or 'valid' (in time order, one pass).
    dp_rank, dp_size : this rank's data-parallel group and the number of groups.
    tile : this rank's tile of the domain (default: the whole grid).
    state : a ``state_dict()`` to resume from.
    sources : the :func:`open_sources` of ``cfg``, when already open (not re-opened here).
    """

    def __init__(
        self,
        cfg: DataConfig,
        *,
        split: str = "train",
        dp_rank: int = 0,
        dp_size: int = 1,
        tile: Tile | None = None,
        state: Mapping | None = None,
        sources: Mapping[str, GridSource] | None = None,
    ) -> None:
        cfg.validate()
        self.cfg, self.split = cfg, split
        self.sources = dict(sources) if sources is not None else open_sources(cfg)
        target = self.sources["target"]
        start, end = cfg.time_range(split)
        indices = target.time_indices(start, end)
        if indices.size == 0:
            raise DataError(f"config key 'data.{split}_time': no target time in [{start}, {end}]")
        train = split == "train"
        self.sampler = TimeSampler(
            indices, rank=dp_rank, world=dp_size, seed=cfg.seed, shuffle=train, drop_last=train
        )
        self.tile = tile or Tile.full(target.shape)
        if not self.tile.within(target.shape):
            raise ValueError(f"tile {self.tile} is outside the grid {target.shape}")
        self.region = self.tile.grow(cfg.tile_margin, target.shape)
        chunks = target.chunks(cfg.variables[0]) or (1, 1, 1)
        shape = window_shape(cfg.mode, self.region, cfg.patch_shape, chunks, cfg.window)
        self.planner = WindowPlan(
            cfg.mode, cfg.seed, cfg.batch_size, self.sampler, self.region, shape,
            (int(chunks[-2]), int(chunks[-1])), None if train else 1,
        )  # fmt: skip
        self.window_shape = shape
        self.reader = self._build_reader(indices)
        self.masked_windows = 0
        self._resume, self._state = self.sampler.resume_point(state), None
        # The background reader references the planner and reader, never this object, so a
        # forgotten stream is collected and its finalizer stops the reads.
        self._running: dict = {}
        self._finalizer = weakref.finalize(self, _stop, self._running)

    # Set-up -----------------------------------------------------------------------------------

    def _build_reader(self, indices: np.ndarray) -> SampleReader:
        cfg, src = self.cfg, self.sources
        stats, log1p = cfg.stats_file, cfg.log1p_variables
        target = src["target"]
        norm = Normalizer.from_file(stats, "target", cfg.variables, log1p)
        groups = {"target": Group(target, norm)}
        if "condition" in src:
            cond = src["condition"]
            groups["condition"] = Group(
                cond,
                Normalizer.from_file(stats, "condition", cfg.condition_variables, log1p),
                condition_time_map(target, cond, indices),
                regridder_for(target, cond, self.region),
            )
        if "static" in src:
            static = src["static"]
            if static.shape != target.shape:
                raise DataError(
                    f"static grid {static.shape} differs from the target grid {target.shape}",
                    path=static.files[0].path,
                    variable=static.variables[0],
                )
            groups["static"] = Group(
                static, Normalizer.from_file(stats, "static", cfg.static_variables)
            )
        return SampleReader(
            groups["target"], groups.get("condition"), groups.get("static"), cfg.all_nan
        )

    def _start(self) -> ThreadPrefetcher | ProcessPrefetcher:
        tasks = self.planner.tasks(*self._resume)
        if self.cfg.workers == 0:
            return ThreadPrefetcher(self.reader, tasks, self.cfg.prefetch)
        return ProcessPrefetcher(
            self.reader,
            tasks,
            self.cfg.batch_size,
            self.window_shape,
            self.cfg.prefetch,
            self.cfg.workers,
        )

    # Iteration --------------------------------------------------------------------------------

    def __iter__(self) -> DataStream:
        return self

    def __next__(self) -> Batch:
        if "prefetcher" not in self._running:
            self._running["prefetcher"] = self._start()
        task, arrays, masked = self._running["prefetcher"].get()
        self._state = dict(task.state)
        self.masked_windows += masked
        tensors = {k: torch.from_numpy(v) for k, v in arrays.items()}
        batch = Batch(
            data=tensors["data"],
            mask=tensors["mask"],
            origin=torch.tensor(task.origins, dtype=torch.int64).reshape(-1, 2),
            time_index=torch.tensor(task.times, dtype=torch.int64),
            condition=tensors.get("condition"),
            static=tensors.get("static"),
            state=dict(task.state),
            masked=masked,
        )
        if self.cfg.pin_memory and torch.cuda.is_available():
            batch = batch.pin_memory()
        return batch

    def plan(self, n_batches: int) -> list[BatchTask]:
        """The next ``n_batches`` batches' time indices and window origins, without reading."""
        return list(itertools.islice(self.planner.tasks(*self._resume), n_batches))

    def cut_patches(self, batch: Batch, generator: torch.Generator | None = None) -> PatchBatch:
        """``data.patches_per_sample`` random ``data.patch_shape`` patches of each window."""
        return cut_patches(batch, self.cfg.patch_shape, self.cfg.patches_per_sample, generator)

    def state_dict(self) -> dict:
        """Resume state after the last batch returned (prefetched batches are not counted)."""
        if self._state is not None:
            return dict(self._state)
        return self.sampler.state_at(*self._resume)

    def load_state_dict(self, state: Mapping) -> None:
        """Continue from ``state`` (drops prefetched batches)."""
        self.close()
        self._resume, self._state = self.sampler.resume_point(state), None

    def close(self) -> None:
        """Stop background reads (idempotent)."""
        _stop(self._running)

    def __enter__(self) -> DataStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
