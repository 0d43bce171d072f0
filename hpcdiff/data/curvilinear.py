"""2-D (curvilinear) coordinates and map projections of a grid, as WRF and CF files store them.

A WRF domain has no 1-D latitude/longitude: ``XLAT``/``XLONG`` are 2-D fields on the mass grid
(with a ``Time`` dimension, read at the first time) and the projection is in global attributes
(``MAP_PROJ``, ``TRUELAT1``, ...). CF files name 2-D coordinates in a variable's ``coordinates``
attribute. :func:`scan_grid` finds both once per grid; :func:`read_coords2d` reads a window of
them; :func:`nest_positions` places a WRF nest in its parent's index space (the regridder's
separable case for a coarse WRF domain conditioning a fine one).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hpcdiff.data.cf import READ_ERRORS, attributes
from hpcdiff.data.errors import DataError
from hpcdiff.data.tiles import Tile

# Global attributes that place a WRF domain on the globe (copied into samples files).
PROJECTION_ATTRS = (
    "MAP_PROJ", "MAP_PROJ_CHAR", "TRUELAT1", "TRUELAT2", "STAND_LON", "CEN_LAT", "CEN_LON",
    "MOAD_CEN_LAT", "POLE_LAT", "POLE_LON", "DX", "DY", "GRID_ID", "PARENT_ID",
    "I_PARENT_START", "J_PARENT_START", "PARENT_GRID_RATIO", "WEST-EAST_GRID_DIMENSION",
    "SOUTH-NORTH_GRID_DIMENSION", "SIMULATION_START_DATE", "TITLE",
)  # fmt: skip
# Attributes that must agree between a WRF nest and its parent (same projection).
SAME_PROJECTION = ("MAP_PROJ", "TRUELAT1", "TRUELAT2", "STAND_LON", "POLE_LAT", "POLE_LON")
_LAT = {"names": ("xlat", "xlat_m", "lat", "latitude", "nav_lat"), "std": "latitude",
        "units": ("degrees_north", "degree_north", "degrees_n", "degree_n")}  # fmt: skip
_LON = {"names": ("xlong", "xlong_m", "lon", "longitude", "nav_lon"), "std": "longitude",
        "units": ("degrees_east", "degree_east", "degrees_e", "degree_e")}  # fmt: skip


@dataclass(frozen=True)
class GridInfo:
    """Where a grid lies: its 2-D coordinate variables (if any) and projection attributes."""

    path: str
    lat: str | None = None  # 2-D latitude variable on the mass grid
    lon: str | None = None
    projection: Mapping[str, Any] = field(default_factory=dict)
    # What the 1-D y/x coordinates are: 'geographic' (latitude/longitude in degrees),
    # 'projected' (rotated-pole degrees, metres, ...) or None without 1-D coordinates.
    axes: str | None = None

    @property
    def curvilinear(self) -> bool:
        return self.lat is not None and self.lon is not None

    @property
    def is_wrf(self) -> bool:
        return "MAP_PROJ" in self.projection


def _kind(var: Any, path: str) -> str | None:
    attrs = attributes(var, path)
    std = str(attrs.get("standard_name", "")).lower()
    units = str(attrs.get("units", "")).lower().replace(" ", "")
    for kind, rule in (("lat", _LAT), ("lon", _LON)):
        if std == rule["std"] or units in rule["units"] or var.name.lower() in rule["names"]:
            return kind
    return None


def _on_mass_grid(ds: Any, var: Any, ydim: str, xdim: str) -> bool:
    """2-D on (ydim, xdim), possibly behind a time or length-1 dimension."""
    dims = var.dimensions
    if len(dims) < 2 or dims[-2:] != (ydim, xdim):
        return False
    return all(ds.dimensions[d].size == 1 or d.lower() in ("time", "t") for d in dims[:-2])


def find_coords2d(ds: Any, path: str, variable: str, ydim: str, xdim: str) -> tuple:
    """(lat, lon) names of 2-D coordinates on the mass grid ``(ydim, xdim)``, or (None, None).

    Names in ``variable``'s ``coordinates`` attribute come first, then any other variable.
    """
    listed = str(attributes(ds.variables[variable], path).get("coordinates", "")).split()
    found: dict[str, str] = {}
    for name in [*listed, *ds.variables]:
        var = ds.variables.get(name)
        if var is None or isinstance(var.dtype, type) or not _on_mass_grid(ds, var, ydim, xdim):
            continue  # (VLEN strings have a Python type as dtype)
        if np.dtype(var.dtype).kind not in "fiu":
            continue
        kind = _kind(var, path)
        if kind is not None and kind not in found:
            found[kind] = name
    return found.get("lat"), found.get("lon")


def scan_grid(meta: Any, variable: str, shape: tuple[int, int]) -> GridInfo:
    """The :class:`GridInfo` of the file described by ``meta`` (a reader ``FileMeta``)."""
    from hpcdiff.data.reader import NC_LOCK, open_dataset

    ydim, xdim = meta.variables[variable].dims.mass
    ds = open_dataset(meta.path)
    try:
        with NC_LOCK:
            try:
                glob = {k: ds.getncattr(k) for k in ds.ncattrs()}
            except READ_ERRORS as err:
                raise DataError(f"cannot read global attributes ({err})", path=meta.path) from err
            projection = {k: glob[k] for k in PROJECTION_ATTRS if k in glob}
            axes = _axes(ds, meta.path, ydim, xdim)
            if ydim not in ds.dimensions or xdim not in ds.dimensions:
                return GridInfo(meta.path, projection=projection, axes=axes)
            lat, lon = find_coords2d(ds, meta.path, variable, ydim, xdim)
            if lat is None or lon is None or ds.dimensions[ydim].size != shape[0]:
                lat = lon = None
    finally:
        with NC_LOCK:
            ds.close()
    return GridInfo(meta.path, lat, lon, projection, axes)


def _axes(ds: Any, path: str, ydim: str, xdim: str) -> str | None:
    """'geographic', 'projected' or None: what the 1-D coordinates of (ydim, xdim) are."""
    coords = [ds.variables.get(d) for d in (ydim, xdim)]
    if any(c is None or c.dimensions != (d,) for c, d in zip(coords, (ydim, xdim))):
        return None
    kinds = [_kind(c, path) for c in coords]
    if kinds == ["lat", "lon"] and all(c.name.lower() not in ("rlat", "rlon") for c in coords):
        std = [str(attributes(c, path).get("standard_name", "")).lower() for c in coords]
        if not any(s.startswith("grid_") or s.startswith("projection_") for s in std):
            return "geographic"
    return "projected"


def read_coords2d(info: GridInfo, window: Tile | None = None) -> tuple[np.ndarray, np.ndarray]:
    """float64 (lat, lon) on ``window`` (whole grid if None) at the first time; DataError
    for missing (NaN, fill) values, naming the file and variable."""
    from hpcdiff.data.reader import NC_LOCK, open_dataset

    if not info.curvilinear:
        raise DataError("has no 2-D latitude/longitude coordinates", path=info.path)
    ds = open_dataset(info.path)
    out = []
    try:
        with NC_LOCK:
            for name in (info.lat, info.lon):
                var = ds.variables[name]
                rows, cols = window.slices() if window is not None else (slice(None),) * 2
                key = (0,) * (var.ndim - 2) + (rows, cols)
                try:
                    values = var[key]
                except READ_ERRORS as err:
                    raise DataError(f"read failed ({err})", path=info.path, variable=name) from None
                values = np.ma.filled(np.ma.asarray(values).astype(np.float64), np.nan)
                if not np.isfinite(values).all():
                    raise DataError(
                        "2-D coordinate has missing values (NaN or _FillValue)",
                        path=info.path,
                        variable=name,
                    )
                out.append(values)
    finally:
        with NC_LOCK:
            ds.close()
    return out[0], out[1]


def _number(info: GridInfo, key: str) -> float:
    try:
        return float(np.asarray(info.projection[key]).reshape(-1)[0])
    except (KeyError, TypeError, ValueError, IndexError):
        raise DataError(
            f"global attribute {key} is missing or not a number", path=info.path
        ) from None


def is_nest_of(fine: GridInfo, coarse: GridInfo) -> bool:
    """True when ``fine`` is a WRF nest whose parent is the ``coarse`` WRF domain."""
    if not (fine.is_wrf and coarse.is_wrf):
        return False
    keys = ("PARENT_ID", "GRID_ID")
    if any(k not in fine.projection for k in keys) or "GRID_ID" not in coarse.projection:
        return False
    return _number(fine, "PARENT_ID") == _number(coarse, "GRID_ID") != _number(fine, "GRID_ID")


def nest_positions(fine: GridInfo, coarse: GridInfo, shape: tuple[int, int]) -> tuple:
    """Mass points of the nest ``fine`` as fractional (row, col) indices of its parent.

    WRF puts the nest's lower-left staggered corner on the parent's staggered point
    (I_PARENT_START, J_PARENT_START) (1-based) and divides each parent cell into
    PARENT_GRID_RATIO cells, so nest mass point i lies at parent index
    ``start - 1 + (i + 0.5) / ratio - 0.5``: the mapping is separable.
    """
    for key in SAME_PROJECTION:
        if key in fine.projection or key in coarse.projection:
            a, b = _number(fine, key), _number(coarse, key)
            if not np.isclose(a, b, rtol=1e-6, atol=1e-6):
                raise DataError(
                    f"global attribute {key} = {a} differs from {b} of the condition domain "
                    f"{coarse.path}; the nest and its parent must share the projection",
                    path=fine.path,
                )
    ratio = _number(fine, "PARENT_GRID_RATIO")
    i0, j0 = _number(fine, "I_PARENT_START"), _number(fine, "J_PARENT_START")
    rows = j0 - 1 + (np.arange(shape[0]) + 0.5) / ratio - 0.5
    cols = i0 - 1 + (np.arange(shape[1]) + 0.5) / ratio - 0.5
    return rows, cols
