"""Which windows a rank reads: the batch tasks of a stream, planned without any I/O.

In tile mode every sample's window is the rank's tile grown by the margin. In patch mode each
sample gets a window that covers ``patch_shape`` with whole HDF5 chunks, at a chunk-aligned
origin inside the tile (+ margin) drawn from ``SeedSequence([seed, epoch, global position])``,
so windows do not depend on the number of ranks and resume exactly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from hpcdiff.data.loader import BatchTask
from hpcdiff.data.sampler import SampleRef, TimeSampler
from hpcdiff.data.tiles import Tile


def window_shape(
    mode: str,
    region: Tile,
    patch_shape: Sequence[int],
    chunks: Sequence[int],
    window: Sequence[int] | None = None,
) -> tuple[int, int]:
    """Read-window shape: the region (tile mode), or ``patch_shape`` rounded up to chunks."""
    if mode == "tile":
        return region.shape
    hp, wp = int(patch_shape[0]), int(patch_shape[1])
    if window is not None:
        h, w = int(window[0]), int(window[1])
    else:
        h, w = -(-hp // chunks[-2]) * chunks[-2], -(-wp // chunks[-1]) * chunks[-1]
    h, w = min(h, region.shape[0]), min(w, region.shape[1])
    if h < hp or w < wp:
        raise ValueError(f"data.patch_shape {[hp, wp]} does not fit in this rank's region {region}")
    return h, w


@dataclass(frozen=True)
class WindowPlan:
    """Batches of (time index, window origin) for one rank; holds no file handle."""

    mode: str
    seed: int
    batch_size: int
    sampler: TimeSampler
    region: Tile
    shape: tuple[int, int]
    chunks: tuple[int, int]
    epochs: int | None  # None: endless (train); 1: one pass (valid)

    def origin(self, epoch: int, global_position: int) -> tuple[int, int]:
        """Window origin of one sample: fixed in tile mode, seeded by position in patch mode."""
        if self.mode == "tile":
            return self.region.origin
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, epoch, global_position, 1]))
        bounds = ((self.region.row0, self.region.row1), (self.region.col0, self.region.col1))
        out = []
        for (lo, hi), size, step in zip(bounds, self.shape, self.chunks):
            aligned = np.arange(-(-lo // step) * step, hi - size + 1, step)
            choices = aligned if aligned.size else np.arange(lo, hi - size + 1)
            out.append(int(choices[rng.integers(choices.size)]))
        return out[0], out[1]

    def task(self, seq: int, refs: list[SampleRef]) -> BatchTask:
        return BatchTask(
            seq,
            tuple(r.time_index for r in refs),
            tuple(self.origin(r.epoch, r.global_position) for r in refs),
            self.shape,
            self.sampler.state_after(refs[-1]),
        )

    def tasks(self, epoch: int = 0, position: int = 0) -> Iterator[BatchTask]:
        """Batch tasks from ``(epoch, position)`` on (the last one partial in a finite pass)."""
        seq, batch = 0, []
        for ref in self.sampler.iterate(epoch, position, self.epochs):
            batch.append(ref)
            if len(batch) == self.batch_size:
                yield self.task(seq, batch)
                seq, batch = seq + 1, []
        if batch:
            yield self.task(seq, batch)
