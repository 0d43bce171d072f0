"""Multi-file NetCDF grids: validated once, then read window by window with netCDF4.

A :class:`GridSource` is one grid (the high-resolution targets, the coarse conditions or the
static fields) spread over many files concatenated along time. Construction opens every file
once and checks it (variables present, decodable dtypes, one grid, strictly increasing times);
reads then open files lazily, per process (a handle is never shared across fork), and decode
``_FillValue``/``missing_value``/packing to float32 with NaN for missing values.

Hot-path reads go straight to netCDF4 (chunk-aligned slices, the GIL released inside HDF5),
not through dask: per-sample dask reads were measured at 50-85 MB/s against 170-460 MB/s for
direct slicing (see ``MEASUREMENTS.md``). The lazy dask view in :mod:`hpcdiff.data.lazy`
reads through the same :meth:`GridSource.read_block`.

Every failure raises :class:`~hpcdiff.data.errors.DataError` naming file, variable and index.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import netCDF4
import numpy as np

from hpcdiff.data.cf import (
    READ_ERRORS,
    discover_dims,
    file_times,
    format_time,
    parse_time,
    read_values,
    time_variable,
)
from hpcdiff.data.curvilinear import scan_grid
from hpcdiff.data.decode import VarMeta, decode, destagger, var_meta
from hpcdiff.data.errors import DataError
from hpcdiff.data.tiles import Tile

# netCDF-C is not thread-safe: every netCDF4 call in hpcdiff.data holds this lock. HDF5 still
# releases the GIL inside it, so a reader thread overlaps with compute in the main thread.
NC_LOCK = threading.RLock()

ReadHook = Callable[[str, str, tuple], None]


# Per-variable HDF5 chunk cache of streaming handles. netCDF's default (64 MiB per variable)
# only grows the RSS of every rank when each chunk is read once per epoch; 16 MiB still holds
# all the chunks one window read touches for typical chunk shapes.
CHUNK_CACHE_BYTES = 16 * 2**20


class _Handles:
    """Per-process LRU cache of open read-only datasets (reset in a forked child)."""

    def __init__(self, max_open: int = 64) -> None:
        self.max_open = max_open
        self._pid = os.getpid()
        self._open: OrderedDict[str, netCDF4.Dataset] = OrderedDict()

    def get(self, path: str) -> netCDF4.Dataset:
        if self._pid != os.getpid():  # inherited across fork: never reuse the parent's handles
            self._pid, self._open = os.getpid(), OrderedDict()
        ds = self._open.get(path)
        if ds is None:
            ds = open_dataset(path)
            ds.set_auto_maskandscale(False)
            try:
                for var in ds.variables.values():
                    if isinstance(var.chunking(), list):  # None (NetCDF3), 'contiguous'
                        var.set_var_chunk_cache(size=CHUNK_CACHE_BYTES)
            except READ_ERRORS as err:
                ds.close()
                raise DataError(
                    f"cannot set up reads ({type(err).__name__}: {err}); the file may be corrupt",
                    path=path,
                ) from err
            self._open[path] = ds
            while len(self._open) > self.max_open:
                self._open.popitem(last=False)[1].close()
        self._open.move_to_end(path)
        return ds

    def close_all(self) -> None:
        with NC_LOCK:
            while self._open:
                self._open.popitem()[1].close()


HANDLES = _Handles()


def open_dataset(path: str) -> netCDF4.Dataset:
    """Open ``path`` read-only, turning netCDF/HDF5 failures into a :class:`DataError`."""
    if not os.path.isfile(path):
        raise DataError("file not found", path=path)
    with NC_LOCK:
        try:
            return netCDF4.Dataset(path, "r")
        except (OSError, RuntimeError, ValueError) as err:
            raise DataError(
                f"cannot open ({err}); the file is truncated, corrupt or not NetCDF", path=path
            ) from err


@dataclass(frozen=True)
class FileMeta:
    path: str
    n_times: int
    variables: Mapping[str, VarMeta]


def _describe(key: tuple, order: tuple[str, ...]) -> str:
    def one(k):
        return f"{k.start}:{k.stop}" if isinstance(k, slice) else str(k)

    return "[" + ", ".join(f"{d}={one(k)}" for d, k in zip(order, key)) + "]"


class GridSource:
    """One grid over many NetCDF files concatenated along time (or static, ``timed=False``).

    Parameters
    ----------
    paths : files, in any order (they are sorted by their first time).
    variables : variable names that every file must hold on the same (H, W) grid.
    dims : overrides ``{'time'|'y'|'x': dimension name}`` for CF discovery.
    timed : False for static fields (no time dimension, or read at the first time).
    levels : ``{dimension: index}`` read on extra dimensions such as WRF's ``bottom_top``.
    name : what the grid is ('target', 'condition', 'static'), used in messages.

    ``on_read``, if set, is called as ``on_read(path, variable, key)`` before every netCDF4
    read, ``key`` being the slices in the variable's dimension order: the seam tests use to see
    what a rank reads. It runs where the read runs (reader thread or worker process).
    """

    def __init__(
        self,
        paths: Sequence[str],
        variables: Sequence[str],
        *,
        dims: Mapping[str, str] | None = None,
        timed: bool = True,
        name: str = "target",
        levels: Mapping[str, int] | None = None,
    ) -> None:
        if not paths:
            raise DataError(f"no {name} files given")
        if not variables:
            raise DataError(f"no {name} variables given")
        self.name, self.timed, self.variables = name, timed, list(variables)
        self.on_read: ReadHook | None = None
        self.calendar, self._calendar = "standard", None
        self.levels = dict(levels or {})
        scans = [self._scan(str(p), dict(dims or {})) for p in paths]
        if timed:
            scans.sort(key=lambda s: s[1][0] if len(s[1]) else np.inf)
        self.files = [s[0] for s in scans]
        self.shape, self.y_coord, self.x_coord = scans[0][2], scans[0][3], scans[0][4]
        self.grid = scan_grid(self.files[0], self.variables[0], self.shape)
        for scan in scans[1:]:
            self._check_same_grid(scan)
        self.times = self._check_times([s[1] for s in scans]) if timed else np.zeros(0)
        counts = [f.n_times for f in self.files]
        self.file_of = np.repeat(np.arange(len(self.files)), counts)
        self.local_of = np.concatenate([np.arange(n) for n in counts]) if counts else np.zeros(0)

    # Validation -------------------------------------------------------------------------------

    def _scan(self, path: str, overrides: dict):
        ds = open_dataset(path)
        try:
            with NC_LOCK:
                return self._scan_open(ds, path, overrides)
        finally:
            with NC_LOCK:
                ds.close()

    def _scan_open(self, ds: netCDF4.Dataset, path: str, overrides: dict):
        metas, shape, ycoord, xcoord = {}, None, None, None
        for var in self.variables:
            if var not in ds.variables:
                raise DataError(
                    f"missing from the {self.name} file (it has {sorted(ds.variables)})",
                    path=path,
                    variable=var,
                )
            dims = discover_dims(
                ds, var, overrides, timed=self.timed, path=path, levels=self.levels
            )
            metas[var] = var_meta(ds, path, var, dims, self.timed)
            vshape = (
                ds.dimensions[dims.y].size - (dims.stagger == "y"),
                ds.dimensions[dims.x].size - (dims.stagger == "x"),
            )
            if shape is not None and vshape != shape:
                raise DataError(
                    f"grid {vshape} differs from {shape} of {self.variables[0]!r}",
                    path=path,
                    variable=var,
                )
            shape = vshape
            ycoord = ycoord if ycoord is not None else _coord(ds, path, dims.y)
            xcoord = xcoord if xcoord is not None else _coord(ds, path, dims.x)
        first = metas[self.variables[0]].dims
        times = np.zeros(0)
        if self.timed:
            tvar = time_variable(ds, first.time)
            if tvar is None:
                raise DataError(
                    f"time dimension {first.time!r} has no 1-D coordinate variable "
                    "(nor WRF Times / XTIME)",
                    path=path,
                    variable=self.variables[0],
                )
            times, calendar = file_times(tvar, path)
            if self._calendar is not None and calendar != self._calendar:
                raise DataError(
                    f"calendar {calendar!r} differs from {self._calendar!r}",
                    path=path,
                    variable=tvar.name,
                )
            self._calendar = self.calendar = calendar
        n_times = ds.dimensions[first.time].size if self.timed else 0
        return FileMeta(path, n_times, metas), times, shape, ycoord, xcoord

    def _check_same_grid(self, scan) -> None:
        meta, _, shape, ycoord, xcoord = scan
        first = self.files[0].path
        if shape != self.shape:
            raise DataError(
                f"grid {shape} differs from {self.shape} in {first}",
                path=meta.path,
                variable=self.variables[0],
            )
        for axis, mine, theirs in (("y", self.y_coord, ycoord), ("x", self.x_coord, xcoord)):
            if mine is None or theirs is None or mine.shape != theirs.shape:
                continue
            bad = np.flatnonzero(~np.isclose(mine, theirs, rtol=1e-6, atol=1e-6))
            if bad.size:
                raise DataError(
                    f"{axis} coordinate {theirs[bad[0]]} differs from {mine[bad[0]]} in {first}",
                    path=meta.path,
                    variable=self.variables[0],
                    index=f"{axis}={bad[0]}",
                )

    def _check_times(self, per_file: list[np.ndarray]) -> np.ndarray:
        prev_end, prev_path = -np.inf, None
        for meta, t in zip(self.files, per_file):
            step = np.diff(t)
            bad = np.flatnonzero(step <= 0)
            if bad.size:
                i = int(bad[0])
                what = "duplicate time" if step[i] == 0 else "time decreases"
                when = format_time(t[i + 1], self.calendar)
                raise DataError(
                    f"{what} {when} at index {i + 1} (after index {i}); times must increase",
                    path=meta.path,
                    variable=meta.variables[self.variables[0]].dims.time,
                    index=i + 1,
                )
            if t.size and t[0] <= prev_end:
                what = "duplicates" if t[0] == prev_end else "overlaps"
                raise DataError(
                    f"first time {format_time(t[0], self.calendar)} {what} the last time of "
                    f"{prev_path}; files must cover disjoint, increasing time ranges",
                    path=meta.path,
                    variable=meta.variables[self.variables[0]].dims.time,
                    index=0,
                )
            if t.size:
                prev_end, prev_path = t[-1], meta.path
        return np.concatenate(per_file) if per_file else np.zeros(0)

    # Queries ----------------------------------------------------------------------------------

    @property
    def n_times(self) -> int:
        return int(self.times.size)

    def chunks(self, variable: str) -> tuple[int, ...] | None:
        """HDF5 chunk shape of ``variable`` in the first file, (time?, y, x) order."""
        return self.files[0].variables[variable].chunks

    def time_indices(self, start: str | None = None, end: str | None = None) -> np.ndarray:
        """Global time indices with ``start <= time <= end`` (ISO strings, inclusive)."""
        lo = -np.inf if start is None else parse_time(start, self.calendar)
        hi = np.inf if end is None else parse_time(end, self.calendar)
        return np.flatnonzero((self.times >= lo) & (self.times <= hi))

    # Reads ------------------------------------------------------------------------------------

    def read_block(
        self, file_index: int, variable: str, times: int | slice | None, window: Tile | None
    ) -> np.ndarray:
        """Decoded float32 block ``(t?, h, w)`` of one file; ``times`` indexes that file."""
        meta = self.files[file_index]
        vm = meta.variables[variable]
        window = window or Tile.full(self.shape)
        rows, cols = window.slices()
        if vm.dims.stagger == "y":  # the mass rows [r0, r1) lie between staggered r0 .. r1
            rows = slice(rows.start, rows.stop + 1)
        elif vm.dims.stagger == "x":
            cols = slice(cols.start, cols.stop + 1)
        sel = {vm.dims.y: rows, vm.dims.x: cols}
        if vm.dims.time is not None:
            sel[vm.dims.time] = times
        key = tuple(sel.get(d, self.levels.get(d, 0)) for d in vm.dims.order)
        if self.on_read is not None:
            self.on_read(meta.path, variable, key)
        with NC_LOCK:
            var = HANDLES.get(meta.path).variables.get(variable)
            if var is None:
                raise DataError(
                    "missing: the file changed after it was validated",
                    path=meta.path,
                    variable=variable,
                )
            try:
                raw = np.asarray(var[key])
            except READ_ERRORS as err:
                # Not chained (tests/data/test_data_errors.py pins this): the message already
                # carries netCDF's text, and prefetchers hand the error on to another thread.
                raise DataError(
                    f"read failed ({type(err).__name__}: {err}); "
                    "the file may be truncated or corrupt",
                    path=meta.path,
                    variable=variable,
                    index=_describe(key, vm.dims.order),
                ) from None
        kept = [d for d, k in zip(vm.dims.order, key) if isinstance(k, slice)]
        wanted = [d for d in (vm.dims.time, vm.dims.y, vm.dims.x) if d in kept]
        if kept != wanted:
            raw = np.transpose(raw, [kept.index(d) for d in wanted])
        return destagger(decode(raw, vm), vm.dims.stagger)

    def read(self, variable: str, t: int, window: Tile | None = None) -> np.ndarray:
        """Decoded ``(h, w)`` float32 window of ``variable`` at global time index ``t``."""
        if not 0 <= t < self.n_times:
            raise DataError(f"time index out of range [0, {self.n_times})", index=t)
        return self.read_block(int(self.file_of[t]), variable, int(self.local_of[t]), window)

    def read_static(self, variable: str, window: Tile | None = None) -> np.ndarray:
        """Decoded ``(h, w)`` float32 window of a static (time-less) variable."""
        return self.read_block(0, variable, None, window)


def _coord(ds: netCDF4.Dataset, path: str, dim: str) -> np.ndarray | None:
    """1-D coordinate values of ``dim`` as float64, or None if it has no coordinate variable;
    :class:`DataError` for unreadable, non-numeric or missing (NaN, ``_FillValue``) values."""
    var = ds.variables.get(dim)
    if var is None or var.dimensions != (dim,):
        return None
    values = read_values(var, path)
    if values.dtype.kind not in "fiu":
        raise DataError(
            f"coordinate of dimension {dim!r} has dtype {values.dtype}; expected numbers",
            path=path,
            variable=dim,
        )
    numbers = np.ma.filled(values.astype(np.float64), np.nan)
    missing = np.flatnonzero(~np.isfinite(numbers))
    if missing.size:  # grids are compared and regridded by these values
        raise DataError(
            "grid coordinate is missing (NaN, infinite or _FillValue)",
            path=path,
            variable=dim,
            index=int(missing[0]),
        )
    return numbers
