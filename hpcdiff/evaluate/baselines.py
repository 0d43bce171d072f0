"""Interpolation baselines of ``hpcdiff evaluate``: the coarse condition put on the target grid.

Two separable linear maps from a coarse grid (h, w) to the target grid (H, W), each one
matrix per axis applied as ``fine = A_y @ coarse @ A_x.T``:

* ``bicubic``: cubic convolution (Keys 1981, a = -0.5) at the target cell centres' fractional
  coarse indices, coarse edges replicated. The right baseline for smooth state variables
  (temperature, wind): it is what "interpolate the coarse model" usually means.
* ``conservative``: first-order conservative remapping; each target cell takes the
  overlap-weighted mean of the coarse cells it intersects (cell edges halfway between
  centres, in index space). It keeps every coarse cell's mean and never leaves the coarse
  range, so it is the right baseline for fluxes and amounts such as precipitation, which a
  coarse model reports as cell means and which must stay non-negative.

A target cell is missing (NaN) when a coarse cell with non-zero weight is. The fractional
positions come from the grids' coordinates as in :func:`hpcdiff.data.regrid.regridder_for`
(rectilinear grids with the same kind of axes, a WRF nest in its parent, or index space when
neither grid has coordinates); a curvilinear target grid has no baseline here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hpcdiff.data.curvilinear import is_nest_of, nest_positions
from hpcdiff.data.errors import DataError
from hpcdiff.data.reader import GridSource, open_dataset
from hpcdiff.evaluate.scores import cell_phases

KINDS = ("bicubic", "conservative")
# The baseline skill is reported against: conservative for fluxes and amounts, else bicubic.
FLUX_WORDS = ("precipitation", "flux", "amount", "rainfall", "snowfall")


def fractional_index(fine: np.ndarray, coarse: np.ndarray) -> np.ndarray:
    """Position of each ``fine`` coordinate in coarse index units (linear between coarse
    points, extrapolated linearly beyond the ends); ``coarse`` strictly monotonic.

    >>> fractional_index(np.array([0.5, 2.0, 4.5]), np.array([1.0, 3.0])).tolist()
    [-0.25, 0.5, 1.75]
    """
    fine, coarse = np.asarray(fine, np.float64), np.asarray(coarse, np.float64)
    n = coarse.size
    if n == 1:
        return np.zeros(fine.shape)
    if coarse[0] > coarse[-1]:
        return (n - 1) - fractional_index(fine, coarse[::-1])
    pos = np.interp(fine, coarse, np.arange(n, dtype=np.float64))
    below, above = fine < coarse[0], fine > coarse[-1]
    pos[below] = (fine[below] - coarse[0]) / (coarse[1] - coarse[0])
    pos[above] = n - 1 + (fine[above] - coarse[-1]) / (coarse[-1] - coarse[-2])
    return pos


def _keys(s: np.ndarray, a: float = -0.5) -> np.ndarray:
    """Keys' cubic convolution kernel W(s)."""
    s = np.abs(s)
    near = ((a + 2) * s - (a + 3)) * s * s + 1
    far = ((a * s - 5 * a) * s + 8 * a) * s - 4 * a
    return np.where(s <= 1, near, np.where(s < 2, far, 0.0))


def cubic_matrix(pos: np.ndarray, n: int) -> np.ndarray:
    """(len(pos), n) weights of cubic convolution at fractional indices ``pos`` of n coarse
    points, indices outside [0, n) replicated from the edge."""
    out = np.zeros((pos.size, n))
    base = np.floor(pos).astype(np.int64)
    rows = np.arange(pos.size)
    for offset in (-1, 0, 1, 2):
        j = base + offset
        np.add.at(out, (rows, np.clip(j, 0, n - 1)), _keys(pos - j))
    return out


def conservative_matrix(pos: np.ndarray, n: int) -> np.ndarray:
    """(len(pos), n) overlap fractions of target cells (edges halfway between the centres
    ``pos``, outer edges mirrored) with coarse cells [j - 1/2, j + 1/2); rows sum to 1."""
    if pos.size == 1:
        edges = np.array([pos[0] - 0.5, pos[0] + 0.5])
    else:
        mid = 0.5 * (pos[1:] + pos[:-1])
        edges = np.concatenate([[2 * pos[0] - mid[0]], mid, [2 * pos[-1] - mid[-1]]])
    lo, hi = np.minimum(edges[:-1], edges[1:]), np.maximum(edges[:-1], edges[1:])
    lo, hi = np.clip(lo, -0.5, n - 0.5), np.clip(hi, -0.5, n - 0.5)  # outside: no coarse cell
    j = np.arange(n)
    overlap = np.clip(np.minimum(hi[:, None], j + 0.5) - np.maximum(lo[:, None], j - 0.5), 0, None)
    total = overlap.sum(1, keepdims=True)
    nearest = np.clip(np.rint(pos), 0, n - 1).astype(np.int64)  # a cell wholly off the grid
    overlap[total[:, 0] == 0, nearest[total[:, 0] == 0]] = 1.0
    return overlap / np.maximum(overlap.sum(1, keepdims=True), 1e-300)


def grid_positions(target: GridSource, condition: GridSource) -> tuple[np.ndarray, np.ndarray]:
    """Fractional coarse (row, col) index of every target row and column; DataError (naming
    the condition file) for grid pairs without a separable map."""
    fine, coarse = target.grid, condition.grid
    if is_nest_of(fine, coarse):
        return nest_positions(fine, coarse, target.shape)
    fine_1d = target.y_coord is not None and target.x_coord is not None
    coarse_1d = condition.y_coord is not None and condition.x_coord is not None
    if fine_1d and coarse_1d and fine.axes == coarse.axes:
        return (fractional_index(target.y_coord, condition.y_coord),
                fractional_index(target.x_coord, condition.x_coord))  # fmt: skip
    if not (fine.curvilinear or coarse.curvilinear or fine_1d or coarse_1d):
        return index_positions(target.shape, condition.shape)
    raise DataError(
        "no interpolation baseline for this pair of grids (a curvilinear grid, or coordinates "
        "on one grid only)",
        path=condition.files[0].path,
    )


def index_positions(fine_shape, coarse_shape) -> tuple[np.ndarray, np.ndarray]:
    """Positions when both grids span the same box: cell centres (i + 1/2) / n."""
    return tuple((np.arange(nf) + 0.5) * nc / nf - 0.5 for nf, nc in zip(fine_shape, coarse_shape))


class Interpolation:
    """The separable maps of :data:`KINDS` from a coarse grid onto the target grid."""

    def __init__(self, pos_y: np.ndarray, pos_x: np.ndarray, coarse_shape: Sequence[int]):
        ny, nx = (int(s) for s in coarse_shape)
        self.coarse_shape = (ny, nx)
        self.matrices = {
            "bicubic": (cubic_matrix(pos_y, ny), cubic_matrix(pos_x, nx)),
            "conservative": (conservative_matrix(pos_y, ny), conservative_matrix(pos_x, nx)),
        }

    def __call__(self, coarse: np.ndarray, kind: str) -> np.ndarray:
        """``coarse`` (h, w) on the target grid (H, W), float32, NaN where a coarse cell with
        weight is NaN."""
        A_y, A_x = self.matrices[kind]
        if tuple(coarse.shape) != self.coarse_shape:
            raise ValueError(f"coarse field {coarse.shape} is not on {self.coarse_shape}")
        bad = ~np.isfinite(coarse)
        fine = A_y @ np.where(bad, 0.0, coarse.astype(np.float64)) @ A_x.T  # (H, W)
        if bad.any():
            fine[(np.abs(A_y) @ bad @ np.abs(A_x).T) > 0] = np.nan
        return fine.astype(np.float32)


def reference_kind(standard_name: str) -> str:
    """The baseline that skill is reported against for a variable of ``standard_name``.

    >>> reference_kind("lwe_precipitation_rate"), reference_kind("air_temperature")
    ('conservative', 'bicubic')
    """
    name = standard_name.lower()
    return "conservative" if any(w in name for w in FLUX_WORDS) else "bicubic"


class ConditionBaselines:
    """Interpolated condition fields for the sample times, one variable and time at a time.

    ``condition``: the coarse files' :class:`GridSource` holding the target variables it
    has; ``positions``: :func:`grid_positions` of the target grid; ``times``: seconds since
    1970 of the samples (None: by position).
    """

    def __init__(self, condition: GridSource, positions, times: np.ndarray | None, n: int):
        self.source = condition
        pos_y, pos_x = positions
        self.positions = positions
        self.interp = Interpolation(pos_y, pos_x, condition.shape)
        self.index = _match(condition, times, n)
        self.description = ", ".join(f.path for f in condition.files)

    @property
    def variables(self) -> list[str]:
        return list(self.source.variables)

    def fields(self, name: str, t: int) -> dict[str, np.ndarray]:
        """{kind: (H, W)} of variable ``name`` at sample time step ``t``."""
        coarse = self.source.read(name, int(self.index[t]))
        return {kind: self.interp(coarse, kind) for kind in KINDS}


def _match(source: GridSource, times: np.ndarray | None, n: int) -> np.ndarray:
    """Index in ``source`` of each of the ``n`` sample times (by value; by position)."""
    where = source.files[0].path
    if times is None:
        if source.n_times < n:
            raise DataError(f"has {source.n_times} times, fewer than the {n} samples", path=where)
        return np.arange(n)
    index = []
    for seconds in times:
        hit = np.flatnonzero(np.abs(source.times - seconds) < 0.5)
        if hit.size == 0:
            raise DataError(f"has no time {seconds:.0f} s of the samples file", path=where)
        index.append(int(hit[0]))
    return np.asarray(index)


class Baselines:
    """Every baseline of a samples file: the interpolated condition (:data:`KINDS`) for the
    target variables the condition has, and ``regression`` (the regression mean a residual
    run adds back, ``<variable>_regression`` in the samples file) where present."""

    def __init__(self, samples, condition: ConditionBaselines | None, note: str | None = None):
        self.samples, self.condition = samples, condition
        self.description = condition.description if condition is not None else note
        self.coarse_shape = None if condition is None else condition.source.shape

    @classmethod
    def open(cls, samples, truth, paths: Sequence[str] | None, fallbacks) -> Baselines:
        """Baselines of ``samples`` (an evaluate SamplesFile) with the condition ``paths``,
        else the run's (``fallbacks``); None found: only the regression baseline."""
        from hpcdiff.data.config import resolve_files

        names = list(samples.variables)
        if paths:
            files = resolve_files(list(paths), "condition_files")
        elif fallbacks.condition_files:
            try:  # the run's files, relative to where it was trained: maybe not from here
                files = resolve_files(fallbacks.condition_files, "condition_files")
            except DataError as err:
                note = f"no interpolation baseline ({err}; evaluate from the directory the run "
                return cls(samples, None, note + "was trained in, or pass --condition)")
            names = [v for v in names if v in fallbacks.condition_variables]
        else:
            return cls(samples, None, "no condition files: no interpolation baseline")
        first = open_dataset(files[0])
        try:
            names = [v for v in names if v in first.variables]
        finally:
            first.close()
        if not names:
            return cls(samples, None, "the condition has none of the target variables")
        dims, levels = fallbacks.truth_dims, fallbacks.truth_levels
        source = GridSource(files, names, dims=dims, name="condition", levels=levels)
        target = getattr(truth, "source", None)
        try:
            if target is None and fallbacks.truth_files:
                target = GridSource(resolve_files(fallbacks.truth_files, "files"),
                                    samples.variables[:1], dims=dims, levels=levels)  # fmt: skip
            if target is not None:
                positions = grid_positions(target, source)
            else:  # no target coordinates: both grids span the same box
                positions = index_positions(samples.shape, source.shape)
        except DataError as err:  # a curvilinear grid: scored without interpolation baseline
            return cls(samples, None, f"no interpolation baseline: {err}")
        return cls(samples, ConditionBaselines(source, positions, samples.times, samples.n_times))

    def line_phases(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Position classes of the target grid's row and column lines within the condition's
        cells (:func:`~hpcdiff.evaluate.scores.cell_phases`); None without a condition."""
        if self.condition is None:
            return None
        return tuple(cell_phases(p) for p in self.condition.positions)

    def kinds(self, name: str) -> list[str]:
        """The baselines of variable ``name``."""
        out = list(KINDS) if self.condition and name in self.condition.variables else []
        return out + (["regression"] if self.samples.has_truth(name, "regression") else [])

    def fields(self, name: str, t: int) -> dict[str, np.ndarray]:
        """{kind: (H, W)} of variable ``name`` at sample time step ``t``."""
        out = {}
        if self.condition is not None and name in self.condition.variables:
            out.update(self.condition.fields(name, t))
        if self.samples.has_truth(name, "regression"):
            out["regression"] = self.samples.truth(name, t, "regression")
        return out

    def reference(self, name: str) -> str | None:
        """The baseline the table reports skill against: the regression mean where there is
        one, else :func:`reference_kind` of the variable's standard_name."""
        kinds = self.kinds(name)
        if "regression" in kinds:
            return "regression"
        if not kinds:
            return None
        return reference_kind(str(getattr(self.samples.ds[name], "standard_name", "")))

    def shown(self, name: str, fields: dict) -> tuple[str, np.ndarray] | None:
        """The (title, field) map panel of the reference baseline."""
        kind = self.reference(name)
        return None if kind is None else (kind, fields[kind])
