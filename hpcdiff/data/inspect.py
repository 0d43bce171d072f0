"""``hpcdiff data inspect``: dimensions, coordinates, variables, chunking and compression.

Warns when the storage layout will make window reads slow and says how to rechunk:
contiguous storage (a window read touches whole rows), chunks spanning several time steps
(a random time step decodes all of them), chunks under 16 KiB (per-chunk overhead dominates)
or over 16 MiB (every patch decodes at least that much), and grid dimensions without CF
``axis``/``standard_name`` attributes. A layout warning is given only when the suggested
chunking differs from the file's: a small field stored one time step per chunk is as good as
it gets.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import netCDF4
import numpy as np

from hpcdiff.data.cf import classify_coordinate, epoch_seconds, format_time, read_values
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
    filters = var.filters() or {}
    parts = []
    if chunks == "contiguous":
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
    if "_FillValue" in var.ncattrs():
        parts.append(f"_FillValue {float(var.getncattr('_FillValue')):g}")
    return ", ".join(parts)


def _grid_dims(ds: netCDF4.Dataset, var: netCDF4.Variable) -> list[str]:
    return [d for d in var.dimensions if ds.dimensions[d].size > 1][-2:]


def _warnings(ds: netCDF4.Dataset, path: str, name: str, patch: Sequence[int]) -> list[str]:
    var = ds.variables[name]
    dims = list(var.dimensions)
    if var.ndim < 2 or name in ds.dimensions:
        return []
    out = []
    grid = _grid_dims(ds, var)
    for d in grid:
        if d not in ds.variables or classify_coordinate(ds.variables[d]) is None:
            out.append(f"{name}: dimension {d!r} has no CF axis/standard_name; set data.dims")
    chunks = var.chunking()
    good = {d: 1 for d in dims}
    for d, p in zip(grid, patch):
        good[d] = min(int(p), ds.dimensions[d].size)
    spec = ",".join(f"{d}/{good[d]}" for d in dims)
    fix = f"rechunk: nccopy -c {spec} -d 1 -s {os.path.basename(path)} out.nc"
    if chunks != "contiguous" and tuple(chunks) == tuple(good[d] for d in dims):
        return out  # already the layout the fix would write: rechunking cannot help
    if chunks == "contiguous":
        out.append(f"{name}: stored contiguously, every window read spans whole rows; {fix}")
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
