"""Per-variable normalization ``(f(x) - mean) / std`` on numpy arrays (no dask, no torch).

``f`` is the variable's transform: ``none``, or ``log1p`` (``log1p(max(x, 0))``, for
precipitation-like variables). The statistics come from :mod:`hpcdiff.data.stats`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from hpcdiff.data.errors import DataError

FORMAT = "hpcdiff-stats/1"
TRANSFORMS = ("none", "log1p")


def transform(x, name: str):
    """Apply the named transform to a numpy or dask array (``log1p`` clips negatives to 0)."""
    if name == "log1p":
        return np.log1p(np.maximum(x, 0))
    return x


def read_stats(path: str | os.PathLike) -> dict:
    """Read and check a statistics JSON written by :func:`write_stats`."""
    try:
        stats = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read statistics ({err})", path=str(path)) from None
    if not isinstance(stats, dict) or stats.get("format") != FORMAT:
        raise DataError(f"not a {FORMAT} statistics file", path=str(path))
    return stats


class Normalizer:
    """Per-channel ``(f(x) - mean) / std`` for the variables of one group, on numpy arrays."""

    def __init__(self, variables: Sequence[str], stats: Mapping | None, log1p: Sequence[str] = ()):
        self.variables = list(variables)
        if stats is None:  # identity normalization (mean 0, std 1), transforms still applied
            self.mean = np.zeros(len(self.variables), np.float32)
            self.std = np.ones(len(self.variables), np.float32)
            self.transforms = ["log1p" if v in log1p else "none" for v in self.variables]
            return
        entries = [stats[v] for v in self.variables]
        self.mean = np.array([e["mean"] for e in entries], np.float32)
        std = np.array([e["std"] for e in entries], np.float32)
        self.std = np.where(np.isfinite(std) & (std > 1e-12), std, 1.0).astype(np.float32)
        self.transforms = [e.get("transform", "none") for e in entries]

    @classmethod
    def from_file(
        cls, path: str | None, group: str, variables: Sequence[str], log1p: Sequence[str] = ()
    ) -> Normalizer:
        """The normalizer of ``group`` from a stats JSON, checked against the config."""
        if path is None:
            return cls(variables, None, log1p)
        section = read_stats(path)["groups"].get(group, {})
        for var in variables:
            if var not in section:
                raise DataError(
                    f"no {group} statistics (run `hpcdiff data stats`)", path=path, variable=var
                )
            want = "log1p" if var in log1p else "none"
            if section[var].get("transform", "none") != want:
                raise DataError(
                    f"statistics use transform {section[var].get('transform')!r} but the "
                    f"config asks for {want!r} (data.log1p_variables)",
                    path=path,
                    variable=var,
                )
        return cls(variables, section, log1p)

    def __call__(self, x: np.ndarray, axis: int = -3) -> np.ndarray:
        """Normalize ``x`` in place; channel axis ``axis`` (default: (..., C, h, w))."""
        for c, name in enumerate(self.transforms):
            if name == "log1p":
                index = [slice(None)] * x.ndim
                index[axis] = c
                view = x[tuple(index)]  # a view: transformed in place
                np.maximum(view, 0, out=view)
                np.log1p(view, out=view)
        shape = [1] * x.ndim
        shape[axis] = len(self.variables)
        x -= self.mean.reshape(shape)
        x /= self.std.reshape(shape)
        return x

    def denormalize(self, x: np.ndarray, axis: int = -3) -> np.ndarray:
        """Inverse of :meth:`__call__` as a new array (``log1p`` undone by ``expm1``)."""
        shape = [1] * x.ndim
        shape[axis] = len(self.variables)
        out = x * self.std.reshape(shape) + self.mean.reshape(shape)
        for c, name in enumerate(self.transforms):
            if name == "log1p":
                index = [slice(None)] * x.ndim
                index[axis] = c
                out[tuple(index)] = np.expm1(out[tuple(index)])
        return out

    def channel(self, c: int, x: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Normalize channel ``c`` from ``x`` into ``out`` (one pass fewer than copy + call)."""
        if self.transforms[c] == "log1p":
            np.maximum(x, 0, out=out)
            np.log1p(out, out=out)
            out -= self.mean[c]
        else:
            np.subtract(x, self.mean[c], out=out)
        out /= self.std[c]
        return out
