"""The ``data:`` config section: which files and variables, how to stream them.

Example (YAML)::

    data:
      files: ["data/synth/fine_*.nc"]          # target variables, high-resolution grid
      variables: [t2m, u10, v10, tp]
      condition_files: ["data/synth/coarse_*.nc"]
      condition_variables: [t2m, u10, v10, tp]  # regridded to the fine grid, cached weights
      static_files: ["data/synth/static.nc"]
      static_variables: [orography, lsm]
      train_time: ["2020-01-01", "2020-01-04T23:00"]   # inclusive; quote or not
      valid_time: ["2020-01-05", "2020-01-05T23:00"]
      stats_file: data/synth/stats.json         # from `hpcdiff data stats`
      log1p_variables: [tp]
      mode: tile                                # or `patch` (random chunk-aligned windows)
      batch_size: 4
      patch_shape: [64, 64]
      patches_per_sample: 4
"""

from __future__ import annotations

import datetime as _dt
import glob
from dataclasses import dataclass, field
from typing import Any, Literal

from hpcdiff.config import ConfigError
from hpcdiff.data.errors import DataError


@dataclass
class DataConfig:
    """Typed ``data:`` section; :meth:`validate` names the offending ``data.<key>``."""

    # Target NetCDF files (globs; sorted, each must match a file), concatenated along time.
    files: list[str] = field(default_factory=list)
    # Variables read from data.files: the generated channels, in this order.
    variables: list[str] = field(default_factory=list)
    # Coarse input files (globs), bilinearly regridded onto the target grid; they must hold
    # every target time that is read.
    condition_files: list[str] = field(default_factory=list)
    # Variables read from data.condition_files: condition channels of the backbone input.
    condition_variables: list[str] = field(default_factory=list)
    # Time-invariant files on the target grid (orography, land-sea mask, ...).
    static_files: list[str] = field(default_factory=list)
    # Variables read from data.static_files: condition channels after the coarse ones.
    static_variables: list[str] = field(default_factory=list)
    # Dimension names that override CF discovery; keys time, y, x (e.g. {y: rlat, x: rlon}).
    dims: dict[str, str] = field(default_factory=dict)
    # Index read on each extra dimension of length > 1, e.g. {bottom_top: 0} for the lowest
    # model level of WRF's U, V, T (every variable with that dimension reads that index).
    levels: dict[str, int] = field(default_factory=dict)
    # [start, end] training times, inclusive: ISO date/time strings or YAML dates; a UTC
    # offset is converted to UTC (file times are UTC). null: every time in the files.
    train_time: tuple[Any, Any] | None = None
    # [start, end] validation and sampling times, written as data.train_time; null: every time.
    valid_time: tuple[Any, Any] | None = None
    # Per-variable mean/std JSON from `hpcdiff data stats`; null: no normalization (log1p of
    # data.log1p_variables still applied).
    stats_file: str | None = None
    # Target/condition variables read as log1p(max(x, 0)) before normalization
    # (precipitation); the stats file must have been computed with the same list.
    log1p_variables: list[str] = field(default_factory=list)
    # What a sample reads: tile, the rank's whole tile (one read per variable and time);
    # patch, a random HDF5-chunk-aligned window covering data.patch_shape inside the tile.
    mode: Literal["tile", "patch"] = "tile"
    batch_size: int = 4  # time samples per rank per micro-batch (DeepSpeed's micro-batch size)
    # Rows/columns read around the tile; 0 for `hpcdiff train`, which derives the margin.
    tile_margin: int = 0
    # Patch mode: read window [rows, cols] (>= data.patch_shape, clipped to the tile);
    # null: data.patch_shape rounded up to whole HDF5 chunks.
    window: tuple[int, int] | None = None
    patch_shape: tuple[int, int] = (64, 64)  # [rows, cols] grid cells per training/sampling patch
    # Random patches cut from each sample's window: a rank trains on batch_size x this
    # patches per micro-batch.
    patches_per_sample: int = 4
    prefetch: int = 2  # batches read ahead in the background (bounds the memory held)
    workers: int = 0  # 0: one reader thread; N: N reader processes (own file handles)
    # Seed of the per-epoch time shuffle and of patch-mode window origins (the same samples
    # for any number of ranks).
    seed: int = 0
    # A target window where a variable has no valid value: error stops with the file,
    # variable and time; mask logs a warning and trains with zero loss weight there.
    all_nan: Literal["error", "mask"] = "error"
    pin_memory: bool = False  # page-locked batches for asynchronous host-to-GPU copies (CUDA)

    def validate(self) -> None:
        """Check cross-field rules; raise :class:`ConfigError` naming ``data.<key>``."""
        _require_names("files", self.files)
        _require_names("variables", self.variables)
        for group in ("condition", "static"):
            files, names = getattr(self, f"{group}_files"), getattr(self, f"{group}_variables")
            if bool(files) != bool(names):
                key = f"{group}_variables" if files else f"{group}_files"
                raise ConfigError(f"config key 'data.{key}' is required with data.{group}_*")
            if names:
                _require_names(f"{group}_variables", names)
        bad = sorted(set(self.dims) - {"time", "y", "x"})
        if bad:
            raise ConfigError(f"config key 'data.dims.{bad[0]}' is unknown; use time, y or x")
        for dim, index in self.levels.items():
            if isinstance(index, bool) or not isinstance(index, int) or index < 0:
                raise ConfigError(
                    f"config key 'data.levels.{dim}': expected an index >= 0, got {index!r}"
                )
        known = set(self.variables) | set(self.condition_variables)
        for name in self.log1p_variables:
            if name not in known:
                raise ConfigError(
                    f"config key 'data.log1p_variables': {name!r} is not a target or "
                    "condition variable"
                )
        for key in ("batch_size", "patches_per_sample", "prefetch"):
            _require_int(key, getattr(self, key), 1)
        for key in ("tile_margin", "workers"):
            _require_int(key, getattr(self, key), 0)
        _require_shape("patch_shape", self.patch_shape)
        if self.window is not None:
            _require_shape("window", self.window)
            if any(w < p for w, p in zip(self.window, self.patch_shape)):
                raise ConfigError(
                    f"config key 'data.window': {list(self.window)} is smaller than "
                    f"data.patch_shape {list(self.patch_shape)}"
                )
        self.train_time = _time_range("train_time", self.train_time)
        self.valid_time = _time_range("valid_time", self.valid_time)

    def time_range(self, split: str) -> tuple[str, str] | tuple[None, None]:
        """``(start, end)`` ISO strings of ``split`` ('train' or 'valid'); None = unbounded."""
        if split not in ("train", "valid"):
            raise ValueError(f"split must be 'train' or 'valid', got {split!r}")
        return getattr(self, f"{split}_time") or (None, None)


def _require_names(key: str, names: list[str]) -> None:
    if not names:
        raise ConfigError(f"config key 'data.{key}' must be a non-empty list")
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name:
            raise ConfigError(f"config key 'data.{key}[{i}]': expected a name, got {name!r}")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"config key 'data.{key}': {dup[0]!r} is listed twice")


def _require_int(key: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"config key 'data.{key}': expected an integer >= {low}, got {value!r}")


def _require_shape(key: str, value: Any) -> None:
    ok = isinstance(value, (list, tuple)) and len(value) == 2
    if not ok or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value):
        raise ConfigError(f"config key 'data.{key}': expected [rows, cols] >= 1, got {value!r}")


_ISO = "an ISO date or date-time such as 2020-01-01 or 2020-01-01T06:00[+01:00]"


def _time_point(key: str, item: Any) -> tuple[_dt.datetime, str]:
    """One end of ``data.<key>`` as (naive UTC datetime, ISO text the reader parses)."""
    if isinstance(item, bool) or not isinstance(item, (str, int, _dt.date)):
        raise ConfigError(f"config key 'data.{key}': expected {_ISO}, got {item!r}")
    if isinstance(item, _dt.datetime):  # YAML reads unquoted date-times
        parsed, text = item, item.isoformat()
    elif isinstance(item, _dt.date):  # YAML reads unquoted dates
        parsed, text = _dt.datetime.combine(item, _dt.time()), item.isoformat()
    else:  # a string, or an unquoted YYYYMMDD that YAML read as an integer
        try:
            parsed = _dt.datetime.fromisoformat(str(item))
        except ValueError:
            raise ConfigError(f"config key 'data.{key}': {item!r} is not {_ISO}") from None
        text = item if isinstance(item, str) else parsed.date().isoformat()
    if parsed.utcoffset() is not None:  # the reader compares wall-clock UTC times
        try:
            parsed = parsed.astimezone(_dt.timezone.utc).replace(tzinfo=None)
        except OverflowError:
            raise ConfigError(
                f"config key 'data.{key}': {item!r} is outside the years 1-9999 in UTC"
            ) from None
        text = parsed.isoformat()
    return parsed, text


def _time_range(key: str, value: Any) -> tuple[str, str] | None:
    """``data.<key>`` as (start, end) ISO strings without UTC offset, start <= end.

    >>> _time_range("train_time", ["2020-01-01", "2020-01-02T01:00+01:00"])
    ('2020-01-01', '2020-01-02T00:00:00')
    """
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ConfigError(f"config key 'data.{key}': expected [start, end], got {value!r}")
    (start, start_text), (end, end_text) = (_time_point(key, item) for item in value)
    if start > end:
        raise ConfigError(f"config key 'data.{key}': start {start_text} is after end {end_text}")
    return (start_text, end_text)


def resolve_files(patterns: list[str], key: str) -> list[str]:
    """Expand the globs of ``data.<key>`` (sorted, de-duplicated); error if one matches nothing."""
    found: list[str] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern))
        if not matches:
            raise DataError(f"config key 'data.{key}': {pattern!r} matches no file")
        found.extend(m for m in matches if m not in found)
    return found
