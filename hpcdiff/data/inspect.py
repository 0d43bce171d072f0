"""``hpcdiff data inspect``: dimensions, coordinates, variables, chunking and compression.

Warns when the storage layout will make window reads slow and says how to rechunk:
contiguous storage (NetCDF3 files, or NetCDF4 without chunks) when a patch is less than half
the grid width (a patch reads one short segment per row, spread over whole rows: up to
``W / patch width`` times the bytes on a cold cache), chunks spanning several time steps (a
random time step decodes all of them), chunks under 16 KiB (per-chunk overhead dominates) or
over 16 MiB (every patch decodes at least that much), and grid dimensions that neither CF
attributes nor known names (WRF's ``south_north``/``west_east``) identify. WRF files also get
their time axis (``Times``/``XTIME``), 2-D coordinates and projection listed.
A layout warning is given only when the suggested chunking differs from the file's: a small
field stored one time step per chunk is as good as it gets.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence

import netCDF4
import numpy as np

from hpcdiff.data.cf import (
    READ_ERRORS,
    classify_coordinate,
    classify_dim,
    epoch_seconds,
    file_times,
    format_time,
    read_values,
    time_variable,
)
from hpcdiff.data.curvilinear import PROJECTION_ATTRS
from hpcdiff.data.errors import DataError
from hpcdiff.data.reader import NC_LOCK, open_dataset

SMALL_CHUNK = 16 * 2**10
LARGE_CHUNK = 16 * 2**20


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _coord_line(ds: netCDF4.Dataset, path: str, name: str) -> str:
    var = ds.variables[name]
    kind = classify_coordinate(var) or "?"
    units = getattr(var, "units", "")
    values = np.asarray(read_values(var, path)) if var.size else np.zeros(0)
    line = f"  {name} ({', '.join(var.dimensions)}) {var.dtype} axis={kind} units={units!r}"
    if kind == "time" and values.size:
        secs, calendar = epoch_seconds(var, path)
        first, last = format_time(secs[0], calendar), format_time(secs[-1], calendar)
        line += f" {first} .. {last} ({values.size} steps, calendar {calendar})"
    elif values.size and values.ndim == 1 and values.dtype.kind in "fiu":
        line += f" {values[0]:.6g} .. {values[-1]:.6g}"
    return line


def _storage(var: netCDF4.Variable) -> str:
    chunks = var.chunking()
    filters = var.filters() or {}  # None in NetCDF3 files
    parts = []
    if chunks is None:
        parts.append("contiguous (NetCDF3)")
    elif chunks == "contiguous":
        parts.append("contiguous")
    else:
        nbytes = int(np.prod(chunks)) * var.dtype.itemsize
        parts.append(f"chunks {tuple(chunks)} = {_size(nbytes)}")
    codecs = [k for k in ("zlib", "zstd", "bzip2", "szip", "blosc") if filters.get(k)]
    if codecs:
        level = filters.get("complevel")
        parts.append(" + ".join(codecs) + (f" level {level}" if level else ""))
    if filters.get("shuffle"):
        parts.append("shuffle")
    quant = var.quantization() if hasattr(var, "quantization") else None
    if quant:
        parts.append(f"quantize {quant[1]} {quant[0]}")
    fill = var.getncattr("_FillValue") if "_FillValue" in var.ncattrs() else None
    if fill is not None and np.asarray(fill).dtype.kind in "fiu":
        parts.append(f"_FillValue {float(np.asarray(fill).reshape(-1)[0]):g}")
    return ", ".join(parts)


def _grid_dims(ds: netCDF4.Dataset, var: netCDF4.Variable) -> list[str]:
    return [d for d in var.dimensions if ds.dimensions[d].size > 1][-2:]


def _warnings(ds: netCDF4.Dataset, path: str, name: str, patch: Sequence[int]) -> list[str]:
    var = ds.variables[name]
    dims = list(var.dimensions)
    if var.ndim < 2 or name in ds.dimensions or _text(var):
        return []
    out = []
    grid = _grid_dims(ds, var)
    for d in grid:
        if classify_dim(ds, d, path) is None:
            out.append(f"{name}: dimension {d!r} has no CF axis/standard_name; set data.dims")
    chunks = var.chunking()
    good = {d: 1 for d in dims}
    for d, p in zip(grid, patch):
        good[d] = min(int(p), ds.dimensions[d].size)
    spec = ",".join(f"{d}/{good[d]}" for d in dims)
    fix = f"rechunk: nccopy -c {spec} -d 1 -s {shlex.quote(os.path.basename(path))} out.nc"
    if chunks is None:  # NetCDF3: one warning for the whole file (_netcdf3_warning)
        return out
    if chunks != "contiguous" and tuple(chunks) == tuple(good[d] for d in dims):
        return out  # already the layout the fix would write: rechunking cannot help
    if chunks == "contiguous":
        cost = _contiguous_cost(ds, var, grid, patch)
        if cost:
            out.append(f"{name}: stored contiguously, {cost}; {fix}")
        return out
    by_dim = dict(zip(dims, chunks))
    extra = [d for d in dims if d not in grid and by_dim[d] > 1]
    if extra:
        n = by_dim[extra[0]]
        out.append(f"{name}: chunks span {n} steps of {extra[0]!r}, one step decodes {n}; {fix}")
    nbytes = int(np.prod(chunks)) * var.dtype.itemsize
    if nbytes < SMALL_CHUNK:
        out.append(f"{name}: chunks of {_size(nbytes)} are small (per-chunk overhead); {fix}")
    if nbytes > LARGE_CHUNK:
        out.append(f"{name}: chunks of {_size(nbytes)}: every patch decodes that much; {fix}")
    return out


def _text(var: netCDF4.Variable) -> bool:
    return isinstance(var.dtype, type) or np.dtype(var.dtype).kind in "SUO"


def _contiguous_cost(ds, var, grid: list[str], patch: Sequence[int]) -> str | None:
    """What a patch read costs in contiguous storage, or None when it is cheap enough (the
    patch spans at least half of each row)."""
    if len(grid) < 2:
        return None
    h, w = (ds.dimensions[d].size for d in grid)
    ph, pw = min(int(patch[0]), h), min(int(patch[1]), w)
    if 2 * pw > w:
        return None
    item = np.dtype(var.dtype).itemsize
    return (
        f"a {ph} x {pw} patch reads {ph} rows of {_size(pw * item)} spread over "
        f"{_size(ph * w * item)} (up to {w / pw:.0f}x the bytes on a cold cache)"
    )


def _netcdf3_warning(ds: netCDF4.Dataset, path: str, patch: Sequence[int]) -> list[str]:
    """One warning for a NetCDF3 file whose fields are wide compared with ``patch``, with the
    nccopy command that writes NetCDF4 chunked like the patch (every field dimension)."""
    fields = [v for n, v in ds.variables.items()
              if v.ndim >= 2 and n not in ds.dimensions and not _text(v)]  # fmt: skip
    costs = [(v, _contiguous_cost(ds, v, _grid_dims(ds, v), patch)) for v in fields]
    costs = [(v, c) for v, c in costs if c]
    if not costs:
        return []
    spec = {}
    for var in fields:
        grid = _grid_dims(ds, var)
        for d in var.dimensions:
            size = ds.dimensions[d].size
            p = patch[grid.index(d)] if d in grid else 1
            spec[d] = max(1, min(int(p), size))
    spec_text = ",".join(f"{d}/{n}" for d, n in spec.items())
    name = shlex.quote(os.path.basename(path))
    var, cost = costs[0]
    return [
        f"{len(costs)} field(s) ({', '.join(v.name for v, _ in costs[:4])}"
        f"{', ...' if len(costs) > 4 else ''}) stored contiguously ({ds.data_model}): read "
        f"as they are, but {cost}; for patch-mode training convert with: nccopy -k nc4 "
        f"-c {spec_text} -d 1 -s {name} out.nc"
    ]


def _first_slab(var: netCDF4.Variable, path: str) -> np.ndarray:
    """The (y, x) values of a 2-D coordinate at index 0 of its leading dimensions (never all
    its times), as float64 with NaN for masked values."""
    try:
        values = var[(0,) * (var.ndim - 2)]
    except READ_ERRORS as err:
        raise DataError(f"read failed ({err})", path=path, variable=var.name) from None
    return np.ma.filled(np.ma.asarray(values, dtype=np.float64), np.nan)


def _wrf_lines(ds: netCDF4.Dataset, path: str) -> list[str]:
    """Time axis without a coordinate variable (WRF Times/XTIME), 2-D coordinates and the
    projection attributes."""
    lines = []
    for dim in ds.dimensions:
        tvar = None if dim in ds.variables else time_variable(ds, dim)
        if tvar is not None and ds.dimensions[dim].size:
            secs, calendar = file_times(tvar, path)
            lines.append(
                f"  time axis of {dim!r}: {tvar.name} {format_time(secs[0], calendar)} .. "
                f"{format_time(secs[-1], calendar)} ({secs.size} steps)"
            )
    for name, var in ds.variables.items():
        std = str(getattr(var, "standard_name", "")) or name
        if var.ndim >= 2 and not _text(var) and std.upper() in ("XLAT", "XLONG", "LATITUDE",
                                                                "LONGITUDE"):  # fmt: skip
            values = _first_slab(var, path)
            lines.append(
                f"  2-D coordinate {name} ({', '.join(var.dimensions)}) "
                f"{np.nanmin(values):.6g} .. {np.nanmax(values):.6g}"
            )
    attrs = {k: ds.getncattr(k) for k in PROJECTION_ATTRS if k in ds.ncattrs()}
    if attrs:
        lines.append("  projection: " + ", ".join(f"{k}={v}" for k, v in attrs.items()))
    return lines


def inspect_file(path: str, patch: Sequence[int] = (256, 256)) -> tuple[list[str], list[str]]:
    """Report lines and warnings for one file."""
    ds = open_dataset(path)
    try:
        with NC_LOCK:
            attrs = {k: ds.getncattr(k) for k in ds.ncattrs()}
            lines = [
                f"== {path} ({_size(os.path.getsize(path))}, {ds.data_model}, "
                f"{attrs.get('Conventions', 'no Conventions attribute')})",
                "dimensions: "
                + ", ".join(
                    f"{d.name} = {d.size}" + (" (unlimited)" if d.isunlimited() else "")
                    for d in ds.dimensions.values()
                ),
                "coordinates:",
            ]
            coords = [n for n in ds.variables if n in ds.dimensions]
            lines += [_coord_line(ds, path, n) for n in coords]
            lines += _wrf_lines(ds, path)
            lines.append("variables:")
            warnings = []
            for name, var in ds.variables.items():
                if name in coords:
                    continue
                std = getattr(var, "standard_name", "")
                units = getattr(var, "units", "")
                lines.append(
                    f"  {name} ({', '.join(var.dimensions)}) {var.dtype} [{units}] {std}: "
                    + _storage(var)
                )
                warnings += _warnings(ds, path, name, patch)
            if ds.data_model.startswith("NETCDF3"):
                warnings += _netcdf3_warning(ds, path, patch)
    finally:
        with NC_LOCK:
            ds.close()
    return lines, warnings


def inspect_paths(paths: Sequence[str], patch: Sequence[int] = (256, 256)) -> tuple[str, int]:
    """The report for ``paths`` and the number of warnings."""
    text, count = [], 0
    for path in paths:
        lines, warnings = inspect_file(path, patch)
        text += lines
        text += [f"WARNING: {w}" for w in warnings]
        count += len(warnings)
    return "\n".join(text), count
