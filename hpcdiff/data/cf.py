"""CF conventions: which dimension of a variable is time, y (rows) and x (columns).

Discovery order for each dimension of a variable: a config override (``data.dims``), then the
attributes of its coordinate variable (``axis``; ``standard_name``; ``units`` such as
``days since ...``, ``degrees_north``, ``degrees_east``), then the dimension's name, and for
time an unlimited dimension. Dimensions of length 1 that are none of these (e.g. a single
height level) are squeezed. Times are compared as float64 seconds since 1970 in the files'
calendar (``cftime``), so files with different time units concatenate correctly.

WRF output is read as written: ``Time``/``south_north``/``west_east`` are the time / y / x
dimensions; ``west_east_stag``/``south_north_stag`` are x / y with a staggered (one longer)
axis that the reader averages onto mass points; the time axis is the character variable
``Times(Time, DateStrLen)`` (``YYYY-MM-DD_HH:MM:SS``), else a 1-D ``XTIME`` with CF units;
length > 1 dimensions such as ``bottom_top`` are read at the index ``data.levels`` gives.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cftime
import numpy as np

from hpcdiff.data.errors import DataError

EPOCH = "seconds since 1970-01-01 00:00:00"

AXES = ("time", "y", "x")

_STANDARD_NAMES = {
    "time": "time",
    "latitude": "y",
    "grid_latitude": "y",
    "projection_y_coordinate": "y",
    "longitude": "x",
    "grid_longitude": "x",
    "projection_x_coordinate": "x",
}
_AXIS_ATTR = {"T": "time", "Y": "y", "X": "x"}
_Y_UNITS = ("degrees_north", "degree_north", "degree_n", "degrees_n", "degreen", "degreesn")
_X_UNITS = ("degrees_east", "degree_east", "degree_e", "degrees_e", "degreee", "degreese")
_NAMES = {
    "time": ("time", "t", "valid_time", "times"),
    "y": ("y", "lat", "latitude", "rlat", "south_north", "j", "rows", "nlat"),
    "x": ("x", "lon", "longitude", "rlon", "west_east", "i", "cols", "nlon"),
}
_NAMES_KIND = {name: kind for kind, names in _NAMES.items() for name in names}
# CF calendar names cftime decodes ("gregorian" is a deprecated alias of "standard").
CALENDARS = (
    "standard",
    "gregorian",
    "proleptic_gregorian",
    "julian",
    "noleap",
    "365_day",
    "all_leap",
    "366_day",
    "360_day",
    "tai",
)
# What netCDF4 raises when stored bytes cannot be read back: netCDF-C/HDF5 status codes
# ("NetCDF: HDF error", "Filter error") surface as RuntimeError, failed I/O as OSError.
READ_ERRORS = (RuntimeError, OSError)


STAG = "_stag"  # WRF suffix of staggered dimensions (one more point than the mass grid)
WRF_TIME_FORMAT = "%Y-%m-%d_%H:%M:%S"


@dataclass(frozen=True)
class GridDims:
    """Names of the time / y / x dimensions of one variable, and its full dimension order.

    ``stagger`` is 'y' or 'x' when that dimension is staggered (WRF ``*_stag``): it has one
    more point than the mass grid and is averaged onto mass points on read.
    """

    time: str | None
    y: str
    x: str
    order: tuple[str, ...]
    stagger: str | None = None

    def squeezed(self) -> tuple[str, ...]:
        """Dimensions that are neither time, y nor x: read at one index (0 or data.levels)."""
        return tuple(d for d in self.order if d not in (self.time, self.y, self.x))

    @property
    def mass(self) -> tuple[str, str]:
        """(y, x) dimension names of the mass grid (``*_stag`` suffix removed)."""
        return mass_name(self.y), mass_name(self.x)


def mass_name(dim: str) -> str:
    """``west_east_stag`` -> ``west_east``; other names unchanged."""
    return dim[: -len(STAG)] if dim.lower().endswith(STAG) else dim


def attributes(var: Any, path: str | None = None) -> dict[str, Any]:
    """All attributes of a netCDF4 variable; :class:`DataError` if the file cannot give them."""
    try:
        return {k: var.getncattr(k) for k in var.ncattrs()}
    except READ_ERRORS as err:
        raise DataError(
            f"cannot read attributes ({type(err).__name__}: {err}); the file may be corrupt",
            path=path,
            variable=var.name,
        ) from err


def read_values(var: Any, path: str | None = None) -> np.ndarray:
    """All values of a (coordinate) variable; :class:`DataError` if its bytes are unreadable."""
    try:
        return var[...]
    except READ_ERRORS as err:
        raise DataError(
            f"read failed ({type(err).__name__}: {err}); the file may be truncated or corrupt",
            path=path,
            variable=var.name,
        ) from err


def classify_coordinate(coord: Any, path: str | None = None) -> str | None:
    """'time', 'y', 'x' or None for a coordinate variable, from CF attributes only."""
    attrs = attributes(coord, path)
    axis = str(attrs.get("axis", "")).upper()
    if axis in _AXIS_ATTR:
        return _AXIS_ATTR[axis]
    std = str(attrs.get("standard_name", "")).lower()
    if std in _STANDARD_NAMES:
        return _STANDARD_NAMES[std]
    units = str(attrs.get("units", "")).lower().replace(" ", "")
    if "since" in units:
        return "time"
    if units in _Y_UNITS:
        return "y"
    if units in _X_UNITS:
        return "x"
    return None


def classify_dim(ds: Any, dim: str, path: str | None = None) -> str | None:
    """'time', 'y', 'x' or None for dimension ``dim`` (attributes, then names)."""
    if dim.lower().endswith(STAG):  # WRF staggered horizontal dims; bottom_top_stag is not
        kind = _NAMES_KIND.get(mass_name(dim).lower())
        return kind if kind in ("y", "x") else None
    if dim in ds.variables:
        kind = classify_coordinate(ds.variables[dim], path)
        if kind is not None:
            return kind
    for kind, names in _NAMES.items():
        if dim.lower() in names:
            return kind
    if ds.dimensions[dim].isunlimited():
        return "time"
    return None


def discover_dims(
    ds: Any,
    variable: str,
    overrides: Mapping[str, str] | None = None,
    *,
    timed: bool = True,
    path: str | None = None,
    levels: Mapping[str, int] | None = None,
) -> GridDims:
    """Find the time / y / x dimensions of ``variable`` in the open netCDF4 dataset ``ds``.

    ``overrides`` maps 'time', 'y', 'x' to dimension names and wins over the attributes;
    ``levels`` maps other dimensions (``bottom_top``) to the index read (``data.levels``).
    A static (``timed=False``) variable with a time dimension is read at its first time.
    """
    var = ds.variables[variable]
    order = tuple(var.dimensions)
    found: dict[str, str] = {}
    first_time: set[str] = set()
    overrides = dict(overrides or {})
    for kind, name in overrides.items():
        if name in order:
            found[kind] = name
    for dim in order:
        if dim in found.values():
            continue
        kind = classify_dim(ds, dim, path)
        if kind == "time" and not timed:
            first_time.add(dim)
        if kind is None or (kind == "time" and not timed):
            continue
        if kind in found:
            raise DataError(
                f"dimensions {found[kind]!r} and {dim!r} both look like {kind}; "
                f"set data.dims.{kind} to choose",
                path=path,
                variable=variable,
            )
        found[kind] = dim
    wanted = AXES if timed else AXES[1:]
    missing = [k for k in wanted if k not in found]
    if missing:
        raise DataError(
            f"cannot find the {'/'.join(missing)} dimension among {list(order)}; "
            f"set data.dims.{missing[0]} or add CF 'axis'/'standard_name' attributes",
            path=path,
            variable=variable,
        )
    stagger = [k for k in ("y", "x") if found[k].lower().endswith(STAG)]
    if len(stagger) > 1:
        raise DataError(
            "is staggered along both y and x; only one staggered axis is supported",
            path=path,
            variable=variable,
        )
    dims = GridDims(found.get("time"), found["y"], found["x"], order, (stagger or [None])[0])
    _check_extra(ds, dims, variable, path, dict(levels or {}), first_time)
    return dims


def _check_extra(ds, dims: GridDims, variable: str, path, levels: dict, first_time: set) -> None:
    """Extra dimensions must have length 1, be a time of a static field or be in levels."""
    for d in dims.squeezed():
        size = ds.dimensions[d].size
        if d in levels:
            index = levels[d]
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < size:
                raise DataError(
                    f"config key 'data.levels.{d}' = {index!r} is not an index in [0, {size})",
                    path=path,
                    variable=variable,
                )
        elif d in first_time and size == 0:
            raise DataError(
                f"static field has an empty time dimension {d!r}; it is read at its first time",
                path=path,
                variable=variable,
            )
        elif size != 1 and d not in first_time:
            raise DataError(
                f"has extra dimension {d!r} of size {size}; choose one index with "
                f"data.levels.{d} (e.g. {{{d}: 0}}), or give (time, y, x) fields",
                path=path,
                variable=variable,
            )


def epoch_seconds(tvar: Any, path: str) -> tuple[np.ndarray, str]:
    """Times of a CF time coordinate as float64 seconds since 1970 in its calendar.

    Raises :class:`DataError` naming ``path`` and the coordinate for units that are not a
    string ``UNIT since DATE``, an unknown calendar, a coordinate that is not 1-D numbers,
    unreadable bytes, missing times (NaN or ``_FillValue``, with the index) and values
    cftime cannot convert.
    """
    name = tvar.name
    attrs = attributes(tvar, path)
    units = attrs.get("units", "")
    if not isinstance(units, str) or "since" not in units:
        raise DataError(
            f"time units {units!r} are not CF 'UNIT since DATE'", path=path, variable=name
        )
    calendar = attrs.get("calendar", "standard")
    if not isinstance(calendar, str) or calendar.strip().lower() not in CALENDARS:
        raise DataError(
            f"unknown calendar {calendar!r}; CF calendars are {', '.join(CALENDARS)}",
            path=path,
            variable=name,
        )
    calendar = calendar.strip().lower()
    calendar = "standard" if calendar == "gregorian" else calendar
    if tvar.ndim != 1:
        raise DataError(
            f"time coordinate has dimensions {tvar.dimensions}; expected one",
            path=path,
            variable=name,
        )
    values = read_values(tvar, path)
    if values.dtype.kind not in "fiu":
        raise DataError(
            f"time coordinate has dtype {values.dtype}; expected numbers", path=path, variable=name
        )
    numbers = np.ma.filled(values.astype(np.float64), np.nan)
    missing = np.flatnonzero(~np.isfinite(numbers))
    if missing.size:  # cftime turns these into masked dates that date2num cannot handle
        raise DataError(
            "time is missing (NaN, infinite or _FillValue)",
            path=path,
            variable=name,
            index=int(missing[0]),
        )
    try:
        dates = cftime.num2date(numbers, units, calendar)
        seconds = np.asarray(cftime.date2num(dates, EPOCH, calendar), dtype=np.float64)
    except (ValueError, OverflowError) as err:  # unparsable units/date, out-of-range values
        raise DataError(
            f"cannot decode times with units {units!r}, calendar {calendar!r} ({err})",
            path=path,
            variable=name,
        ) from err
    return seconds, calendar


def wrf_times(tvar: Any, path: str) -> np.ndarray:
    """WRF ``Times(Time, DateStrLen)`` strings as float64 seconds since 1970 (standard
    calendar, as WRF writes without a calendar attribute); :class:`DataError` naming the
    index of an unparsable string."""
    from datetime import datetime

    raw = read_values(tvar, path)
    if raw.dtype.kind == "S" and raw.ndim == 2:  # characters, as WRF writes them
        texts = [b"".join(row).decode("ascii", "replace") for row in np.ma.filled(raw, b"")]
    elif raw.dtype.kind in "SUO" and raw.ndim == 1:  # joined strings (an _Encoding)
        texts = [t.decode("ascii", "replace") if isinstance(t, bytes) else str(t) for t in raw]
    else:
        raise DataError(
            f"has dtype {raw.dtype} and dimensions {tvar.dimensions}; WRF Times are "
            "characters (Time, DateStrLen)",
            path=path,
            variable=tvar.name,
        )
    seconds = np.empty(len(texts), dtype=np.float64)
    for i, text in enumerate(texts):
        text = text.strip("\x00 ")
        try:
            when = datetime.strptime(text, WRF_TIME_FORMAT)
        except ValueError:
            raise DataError(
                f"time {text!r} is not YYYY-MM-DD_HH:MM:SS",
                path=path,
                variable=tvar.name,
                index=i,
            ) from None
        date = cftime.datetime(*when.timetuple()[:6], calendar="standard")
        seconds[i] = cftime.date2num(date, EPOCH, "standard")
    return seconds


def time_variable(ds: Any, tdim: str) -> Any | None:
    """The variable holding the times of dimension ``tdim``: its CF coordinate variable,
    else WRF's ``Times(tdim, DateStrLen)``, else a 1-D variable with CF units (``XTIME``)."""
    var = ds.variables.get(tdim)
    if var is not None and var.dimensions == (tdim,):
        return var
    times = ds.variables.get("Times")
    if times is not None and times.dimensions[:1] == (tdim,) and times.ndim <= 2:
        return times
    for var in ds.variables.values():
        units = attributes(var).get("units", "") if var.dimensions == (tdim,) else ""
        if isinstance(units, str) and "since" in units:
            return var
    return None


def file_times(tvar: Any, path: str) -> tuple[np.ndarray, str]:
    """Seconds since 1970 and calendar of a :func:`time_variable`."""
    if tvar.name == "Times" and tvar.ndim in (1, 2):
        return wrf_times(tvar, path), "standard"
    return epoch_seconds(tvar, path)


def format_time(seconds: float, calendar: str) -> str:
    """ISO string of ``seconds`` since 1970 in ``calendar``."""
    return cftime.num2date(seconds, EPOCH, calendar).isoformat()


def parse_time(text: str, calendar: str) -> float:
    """Seconds since 1970 in ``calendar`` of an ISO date/time string."""
    from datetime import datetime

    d = datetime.fromisoformat(str(text))
    date = cftime.datetime(d.year, d.month, d.day, d.hour, d.minute, d.second, calendar=calendar)
    return float(cftime.date2num(date, EPOCH, calendar))
