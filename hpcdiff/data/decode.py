"""Decoding one variable's stored values: dtypes, packing, fill values, WRF staggering.

:func:`var_meta` reads (once per file and variable) how to decode, :func:`decode` turns raw
stored values into float32 with NaN for missing values (``_FillValue``/``missing_value``,
unpacked in float64 like netCDF4), :func:`destagger` averages WRF's staggered values onto mass
points. Every problem raises :class:`~hpcdiff.data.errors.DataError` naming file and variable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import netCDF4
import numpy as np

from hpcdiff.data.cf import READ_ERRORS, GridDims, attributes
from hpcdiff.data.errors import DataError, DataTypeError


@dataclass(frozen=True)
class VarMeta:
    """How to read and decode one variable of one file."""

    dims: GridDims
    dtype: str
    fills: tuple[float | int, ...]  # in the stored dtype's range (ints for integer dtypes)
    scale: float | None
    offset: float | None
    # HDF5 chunk shape in (time?, y, x) order; None if contiguous (NetCDF4) or NetCDF3
    chunks: tuple[int, ...] | None


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _number(value: object, key: str, path: str, name: str, scalar: bool) -> np.ndarray:
    """A numeric attribute as a 1-D array; :class:`DataError` for text, empty or non-scalars."""
    arr = np.atleast_1d(np.asarray(value))
    if arr.dtype.kind not in "fiu" or arr.size == 0 or (scalar and arr.size != 1):
        what = "a single number" if scalar else "numbers"
        raise DataError(f"attribute {key} = {value!r} is not {what}", path=path, variable=name)
    return arr.reshape(-1)


def _packing(attrs: Mapping, key: str, path: str, name: str) -> float | None:
    """``scale_factor`` / ``add_offset`` as a finite float, or None when absent."""
    if key not in attrs:
        return None
    value = float(_number(attrs[key], key, path, name, scalar=True)[0])
    if not abs(value) <= _FLOAT32_MAX:  # also rejects NaN: fields are decoded to float32
        raise DataError(
            f"attribute {key} = {value} is not a finite float32 number", path=path, variable=name
        )
    return value


def _fill_values(attrs: Mapping, dtype: np.dtype, path: str, name: str) -> tuple:
    """``_FillValue``/``missing_value`` that stored values of ``dtype`` can equal, exactly.

    Values ``dtype`` cannot hold (NaN or fractions for integers, out-of-range numbers) never
    match a stored value, so they are dropped rather than cast to some value that could.
    """
    fills = [
        v
        for key in ("_FillValue", "missing_value")
        if key in attrs
        for v in _number(attrs[key], key, path, name, scalar=False).tolist()
    ]
    if not fills and dtype.kind == "f":
        fills = [netCDF4.default_fillvals[dtype.str[1:]]]
    kept: list[float | int] = []
    for v in fills:
        if dtype.kind in "iu":  # keep Python ints: int64 fills are not exact as float64
            info = np.iinfo(dtype)
            if isinstance(v, float) and not (np.isfinite(v) and v.is_integer()):
                continue
            if info.min <= int(v) <= info.max:
                kept.append(int(v))
        elif np.isfinite(v):
            with np.errstate(over="ignore"):
                stored = dtype.type(v)
            if np.isfinite(stored):
                kept.append(float(stored))
    return tuple(kept)


def var_meta(ds: netCDF4.Dataset, path: str, name: str, dims: GridDims, timed: bool) -> VarMeta:
    """How to read ``name``; :class:`DataTypeError` for fields that do not decode to numbers."""
    var = ds.variables[name]
    dtype = np.dtype(var.dtype) if not isinstance(var.dtype, type) else np.dtype(object)
    attrs = attributes(var, path)
    numeric = dtype.kind in "fiu" and dtype.itemsize <= 8
    packed = "scale_factor" in attrs or "add_offset" in attrs
    if not numeric or (timed and dtype.kind in "iu" and not packed):
        raise DataTypeError(
            f"has dtype {dtype}; fields must be floating point or integers packed with "
            "scale_factor/add_offset",
            path=path,
            variable=name,
        )
    scale = _packing(attrs, "scale_factor", path, name)
    offset = _packing(attrs, "add_offset", path, name)
    fills = _fill_values(attrs, dtype, path, name)
    try:
        chunking = var.chunking()  # None in NetCDF3 files, 'contiguous' or a list in NetCDF4
    except READ_ERRORS as err:
        raise DataError(
            f"cannot read the storage layout ({err}); the file may be corrupt",
            path=path,
            variable=name,
        ) from err
    chunks = None
    if isinstance(chunking, list):
        by_dim = dict(zip(var.dimensions, chunking))
        axes = (dims.time, dims.y, dims.x) if dims.time else (dims.y, dims.x)
        chunks = tuple(int(by_dim[d]) for d in axes)
    return VarMeta(dims, dtype.str, fills, scale, offset, chunks)


def decode(raw: np.ndarray, meta: VarMeta) -> np.ndarray:
    """Raw stored values -> float32 with NaN where ``_FillValue``/``missing_value``."""
    missing = None
    for fill in meta.fills:  # each is exactly representable in the stored dtype
        hit = raw == np.asarray(fill, dtype=raw.dtype)
        missing = hit if missing is None else missing | hit
    if meta.scale is not None or meta.offset is not None:  # unpack in float64 like netCDF4
        out = raw.astype(np.float64)
        if meta.scale is not None:
            out *= meta.scale
        if meta.offset is not None:
            out += meta.offset
        out = out.astype(np.float32)
    else:
        out = raw.astype(np.float32, copy=raw.dtype != np.float32)
    if missing is not None and missing.any():
        out[missing] = np.nan
    return out


def destagger(values: np.ndarray, stagger: str | None) -> np.ndarray:
    """Mass-point values of a staggered ``(..., h, w)`` block: the mean of the two staggered
    points around each mass point (WRF's arakawa-C grid), in place of a view."""
    if stagger is None:
        return values
    axis = -2 if stagger == "y" else -1
    n = values.shape[axis]
    lo = np.take(values, np.arange(n - 1), axis=axis)
    lo += np.take(values, np.arange(1, n), axis=axis)
    lo *= np.float32(0.5)
    return lo
