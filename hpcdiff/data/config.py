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

    files: list[str] = field(default_factory=list)
    variables: list[str] = field(default_factory=list)
    condition_files: list[str] = field(default_factory=list)
    condition_variables: list[str] = field(default_factory=list)
    static_files: list[str] = field(default_factory=list)
    static_variables: list[str] = field(default_factory=list)
    dims: dict[str, str] = field(default_factory=dict)
    train_time: tuple[Any, Any] | None = None
    valid_time: tuple[Any, Any] | None = None
    stats_file: str | None = None
    log1p_variables: list[str] = field(default_factory=list)
    mode: Literal["tile", "patch"] = "tile"
    batch_size: int = 4
    tile_margin: int = 0
    window: tuple[int, int] | None = None
    patch_shape: tuple[int, int] = (64, 64)
    patches_per_sample: int = 4
    prefetch: int = 2
    workers: int = 0
    seed: int = 0
    all_nan: Literal["error", "mask"] = "error"
    pin_memory: bool = False

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


def _time_range(key: str, value: Any) -> tuple[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ConfigError(f"config key 'data.{key}': expected [start, end], got {value!r}")
    out = []
    for item in value:
        if isinstance(item, (_dt.date, _dt.datetime)):  # YAML reads unquoted dates
            item = item.isoformat()
        try:
            parsed = _dt.datetime.fromisoformat(str(item))
        except ValueError:
            raise ConfigError(
                f"config key 'data.{key}': {item!r} is not an ISO date (YYYY-MM-DD[THH:MM])"
            ) from None
        out.append((parsed, str(item)))
    if out[0][0] > out[1][0]:
        raise ConfigError(f"config key 'data.{key}': start {out[0][1]} is after end {out[1][1]}")
    return (out[0][1], out[1][1])


def resolve_files(patterns: list[str], key: str) -> list[str]:
    """Expand the globs of ``data.<key>`` (sorted, de-duplicated); error if one matches nothing."""
    found: list[str] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern))
        if not matches:
            raise DataError(f"config key 'data.{key}': {pattern!r} matches no file")
        found.extend(m for m in matches if m not in found)
    return found
