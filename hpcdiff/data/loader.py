"""The read kernel of the stream: one batch of windows -> normalized numpy arrays.

Plain numpy and netCDF4 (no torch), so it runs unchanged in the prefetch thread or in a
worker process that imported nothing else. A :class:`BatchTask` names the global time indices
and the window origins of one batch; :meth:`SampleReader.read_into` fills preallocated arrays:

* ``data``      (B, C, h, w) float32: targets, normalized, 0 where missing;
* ``mask``      (B, C, h, w) bool: True where the target value was valid;
* ``condition`` (B, Cc, h, w) float32: coarse conditions, normalized on the coarse grid, then
  regridded to the window with cached bilinear weights, 0 where missing;
* ``static``    (B, Cs, h, w) float32: static fields, normalized, 0 where missing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from hpcdiff import nvtx
from hpcdiff.data.cf import format_time
from hpcdiff.data.errors import DataError
from hpcdiff.data.normalize import Normalizer
from hpcdiff.data.reader import GridSource
from hpcdiff.data.regrid import Regridder
from hpcdiff.data.tiles import Tile

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchTask:
    """One batch to read: global time indices, window origins (row, col) and window shape."""

    seq: int
    times: tuple[int, ...]
    origins: tuple[tuple[int, int], ...]
    shape: tuple[int, int]
    state: dict = field(default_factory=dict)  # sampler state after this batch


@dataclass
class Group:
    """A grid source with its normalizer (and, for conditions, time map and regridder)."""

    source: GridSource
    normalizer: Normalizer
    time_map: np.ndarray | None = None  # target time index -> condition time index
    regridder: Regridder | None = None


class SampleReader:
    """Reads, normalizes and regrids the windows of a :class:`BatchTask` into numpy arrays."""

    def __init__(
        self,
        target: Group,
        condition: Group | None = None,
        static: Group | None = None,
        all_nan: str = "error",
    ) -> None:
        if all_nan not in ("error", "mask"):
            raise ValueError(f"all_nan must be 'error' or 'mask', got {all_nan!r}")
        self.target, self.condition, self.static, self.all_nan = target, condition, static, all_nan
        self._static_cache: tuple[Tile, np.ndarray] | None = None

    def layout(self, batch: int, shape: tuple[int, int]) -> dict[str, tuple[tuple, str]]:
        """Shapes and dtypes of the arrays one batch fills."""
        h, w = shape
        out = {
            "data": ((batch, len(self.target.source.variables), h, w), "float32"),
            "mask": ((batch, len(self.target.source.variables), h, w), "bool"),
        }
        for name, group in (("condition", self.condition), ("static", self.static)):
            if group is not None:
                out[name] = ((batch, len(group.source.variables), h, w), "float32")
        return out

    def allocate(self, batch: int, shape: tuple[int, int]) -> dict[str, np.ndarray]:
        return {k: np.empty(s, dtype=d) for k, (s, d) in self.layout(batch, shape).items()}

    def read_into(self, task: BatchTask, out: dict[str, np.ndarray]) -> int:
        """Fill ``out[...][:B]`` for ``task``; returns how many all-NaN windows were masked."""
        masked = 0
        for b, (t, origin) in enumerate(zip(task.times, task.origins)):
            window = Tile.at(origin, task.shape)
            masked += self._read_target(t, window, out["data"][b], out["mask"][b])
            if self.condition is not None:
                out["condition"][b] = self._read_condition(t, window)
            if self.static is not None:
                out["static"][b] = self._read_static(window)
        return masked

    def _read_target(self, t: int, window: Tile, data: np.ndarray, mask: np.ndarray) -> int:
        source = self.target.source
        for c, var in enumerate(source.variables):
            with nvtx.range("data.read"):
                raw = source.read(var, t, window)  # (h, w)
            with nvtx.range("data.normalize"):
                self.target.normalizer.channel(c, raw, out=data[c])
        with nvtx.range("data.normalize"):
            np.isfinite(data, out=mask)
            if mask.all():  # the common case: nothing missing, nothing to zero
                return 0
            np.copyto(data, 0.0, where=~mask)
        empty = np.flatnonzero(~mask.reshape(mask.shape[0], -1).any(axis=1))
        if empty.size:
            return self._all_nan(t, window, int(empty[0]), int(empty.size))
        return 0

    def _all_nan(self, t: int, window: Tile, channel: int, count: int) -> int:
        source = self.target.source
        path = source.files[int(source.file_of[t])].path
        var = source.variables[channel]
        when = format_time(float(source.times[t]), source.calendar)
        where = f"rows {window.row0}:{window.row1}, cols {window.col0}:{window.col1}"
        if self.all_nan == "error":
            raise DataError(
                f"window {where} has no valid value; set data.all_nan: mask to train on it "
                "with zero loss weight",
                path=path,
                variable=var,
                index=f"time {t} ({when})",
            )
        log.warning("%s: %s at time %d (%s), %s is all missing: masked", path, var, t, when, where)
        return count

    def _read_condition(self, t: int, window: Tile) -> np.ndarray:
        group = self.condition
        source, tc = group.source, int(group.time_map[t])
        src = group.regridder.source_window(window)
        with nvtx.range("data.read"):
            coarse = np.stack([source.read(var, tc, src) for var in source.variables])
        with nvtx.range("data.normalize"):
            group.normalizer(coarse)
            fine = group.regridder.apply(coarse, window)  # (Cc, h, w)
            return np.nan_to_num(fine, nan=0.0, copy=False)

    def _read_static(self, window: Tile) -> np.ndarray:
        if self._static_cache is not None and self._static_cache[0] == window:
            return self._static_cache[1]
        source = self.static.source
        with nvtx.range("data.read"):
            fields = np.stack([source.read_static(var, window) for var in source.variables])
        self.static.normalizer(fields)
        fields = np.nan_to_num(fields, nan=0.0, copy=False)
        self._static_cache = (window, fields)
        return fields
