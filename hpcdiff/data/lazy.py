"""A lazy dask view of a multi-file grid, chunked along the files' own HDF5 chunks.

Each dask chunk is a whole multiple of the HDF5 chunk shape (full rows of chunks first, then
more time steps) of at least ``target_bytes`` (default 32 MiB): whole-dataset reductions with
the threads scheduler and >= 16 MiB chunks ran at 220-400 MB/s here, against ~100 MB/s with
one dask chunk per HDF5 chunk (``MEASUREMENTS.md``). Reads go through
:meth:`GridSource.read_block`, so decoding and error messages match the streaming path.
"""

from __future__ import annotations

from collections.abc import Sequence

import dask.array as da
import numpy as np
from dask.base import tokenize

from hpcdiff.data.reader import GridSource
from hpcdiff.data.tiles import Tile

MIN_CHUNK_BYTES = 16 * 2**20
DEFAULT_CHUNK_BYTES = 32 * 2**20


def dask_chunks(
    shape: Sequence[int],
    native: Sequence[int] | None,
    itemsize: int = 4,
    target_bytes: int = DEFAULT_CHUNK_BYTES,
) -> tuple[int, ...]:
    """Chunk shape: multiples of ``native`` (x, then y, then time) until >= ``target_bytes``.

    >>> dask_chunks((100, 512, 512), (1, 128, 128), target_bytes=2**20)
    (1, 512, 512)
    >>> dask_chunks((100, 512, 512), (1, 128, 128), target_bytes=16 * 2**20)
    (16, 512, 512)
    """
    shape = [int(s) for s in shape]
    chunk = [1] * (len(shape) - 2) + shape[-2:] if native is None else [int(c) for c in native]
    chunk = [min(c, s) for c, s in zip(chunk, shape)]
    for axis in reversed(range(len(shape))):
        per = itemsize * int(np.prod(chunk)) // chunk[axis]
        need = -(-target_bytes // per)  # cells along `axis` to reach the target
        step = chunk[axis]
        chunk[axis] = min(shape[axis], -(-need // step) * step)
        if itemsize * int(np.prod(chunk)) >= target_bytes:
            break
    return tuple(chunk)


class _FileVariable:
    """Array-like over one file's variable, for ``dask.array.from_array``."""

    def __init__(self, source: GridSource, file_index: int, variable: str) -> None:
        self.source, self.file_index, self.variable = source, file_index, variable
        n = source.files[file_index].n_times
        self.shape = (n, *source.shape) if source.timed else tuple(source.shape)
        self.dtype = np.dtype(np.float32)
        self.ndim = len(self.shape)

    def __getitem__(self, key: tuple) -> np.ndarray:
        key = tuple(k if isinstance(k, slice) else slice(k, k + 1) for k in key)
        bounds = [k.indices(n)[:2] for k, n in zip(key, self.shape)]
        if any(stop <= start for start, stop in bounds):
            return np.empty([max(b - a, 0) for a, b in bounds], dtype=self.dtype)
        (r0, r1), (c0, c1) = bounds[-2], bounds[-1]
        times = slice(*bounds[0]) if self.source.timed else None
        return self.source.read_block(self.file_index, self.variable, times, Tile(r0, r1, c0, c1))


def to_dask(source: GridSource, variable: str, target_bytes: int = DEFAULT_CHUNK_BYTES) -> da.Array:
    """Lazy ``(T, H, W)`` (or ``(H, W)`` if static) float32 dask array of ``variable``."""
    parts = []
    for index, meta in enumerate(source.files if source.timed else source.files[:1]):
        arr = _FileVariable(source, index, variable)
        if arr.shape[0] == 0:
            continue
        native = meta.variables[variable].chunks
        chunks = dask_chunks(arr.shape, native, 4, target_bytes)
        name = f"hpcdiff-{variable}-{tokenize(meta.path, variable, chunks, source.shape)}"
        meta_array = np.empty((0,) * arr.ndim, dtype=np.float32)
        parts.append(da.from_array(arr, chunks=chunks, name=name, meta=meta_array, fancy=False))
    if not parts:
        raise ValueError(f"{source.name} variable {variable!r} has no time steps")
    return da.concatenate(parts, axis=0) if source.timed else parts[0]
