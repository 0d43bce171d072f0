"""Normalization statistics: computed out of core with dask, stored as JSON, applied per batch.

``compute_stats`` reduces every variable in one dask graph (threads scheduler, >= 16 MiB chunks
aligned to the HDF5 chunks) to count, missing count, min, max, mean and std. Sums are shifted by
a reference value (the mean of the first time step) before squaring, so the variance has no
catastrophic cancellation for fields like temperature (mean ~280 K, std ~10 K). Variables listed
as ``log1p`` are transformed, ``log1p(max(x, 0))``, before any statistic.

The JSON file::

    {"format": "hpcdiff-stats/1",
     "groups": {"target": {"t2m": {"mean": .., "std": .., "min": .., "max": ..,
                                   "count": .., "missing": .., "transform": "none"}, ...},
                "condition": {...}, "static": {...}}}

A batch is normalized as ``(f(x) - mean) / std`` with ``f`` the variable's transform.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import dask
import dask.array as da
import numpy as np

from hpcdiff.data.lazy import DEFAULT_CHUNK_BYTES, to_dask
from hpcdiff.data.normalize import FORMAT, transform
from hpcdiff.data.reader import GridSource


def _reference(source: GridSource, variable: str, name: str) -> float:
    """Mean of the first time step (or the static field): the shift for stable sums."""
    first = source.read(variable, 0) if source.timed else source.read_static(variable)
    values = transform(first, name)
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else 0.0


def _reductions(x: da.Array, shift: float) -> dict:
    finite = da.isfinite(x)
    dx = da.where(finite, x.astype(np.float64) - shift, 0.0)
    return {
        "count": finite.sum(),
        "missing": (~finite).sum(),
        "sum": dx.sum(),
        "sumsq": (dx * dx).sum(),
        "min": da.where(finite, x, np.inf).min(),
        "max": da.where(finite, x, -np.inf).max(),
    }


def _finish(raw: Mapping, shift: float, name: str) -> dict:
    count = int(raw["count"])
    if count == 0:
        mean = std = lo = hi = math.nan
    else:
        d = float(raw["sum"]) / count
        mean = shift + d
        std = math.sqrt(max(float(raw["sumsq"]) / count - d * d, 0.0))
        lo, hi = float(raw["min"]), float(raw["max"])
    return {
        "mean": mean,
        "std": std,
        "min": lo,
        "max": hi,
        "count": count,
        "missing": int(raw["missing"]),
        "transform": name,
    }


def compute_stats(
    groups: Mapping[str, GridSource],
    log1p: Sequence[str] = (),
    time_index: Mapping[str, np.ndarray] | None = None,
    *,
    target_bytes: int = DEFAULT_CHUNK_BYTES,
    num_workers: int | None = None,
) -> dict:
    """Statistics of every variable of every group (``{'target': source, ...}``), as a dict.

    ``time_index`` optionally restricts a group to some global time indices (e.g. the train
    range); ``num_workers`` threads (default: the CPUs this process may use).
    """
    graph, shifts, names = {}, {}, {}
    for group, source in groups.items():
        for var in source.variables:
            name = "log1p" if var in log1p else "none"
            x = transform(to_dask(source, var, target_bytes), name)
            if source.timed and time_index is not None and group in time_index:
                x = x[np.asarray(time_index[group])]
            shifts[group, var] = _reference(source, var, name)
            names[group, var] = name
            graph[group, var] = _reductions(x, shifts[group, var])
    workers = num_workers or len(os.sched_getaffinity(0))
    (computed,) = dask.compute(graph, scheduler="threads", num_workers=workers)
    out: dict = {"format": FORMAT, "groups": {g: {} for g in groups}}
    for (group, var), raw in computed.items():
        out["groups"][group][var] = _finish(raw, shifts[group, var], names[group, var])
    return out


def write_stats(stats: Mapping, path: str | os.PathLike) -> None:
    """Write the statistics JSON atomically (temporary file + rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(stats, indent=2, allow_nan=True) + "\n")
    os.replace(tmp, path)
