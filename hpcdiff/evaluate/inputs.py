"""What ``hpcdiff evaluate`` reads: the generated ensemble and the truth, one time step at a time.

A samples file holds each variable as (member, time, y, x) (the layout ``hpcdiff sample``
writes; the member and time dimensions may come in either order, and a (member, y, x) variable
is one time step). The truth is ``<variable>_truth`` (time, y, x) in the same file, or a
separate set of CF NetCDF files read with :class:`hpcdiff.data.GridSource` (which decodes fill
values and packing), matched to the samples by time. Bad input raises
:class:`~hpcdiff.data.DataError` naming the file and the variable.
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hpcdiff.data.cf import epoch_seconds, format_time
from hpcdiff.data.errors import DataError
from hpcdiff.data.reader import CHUNK_CACHE_BYTES, GridSource, open_dataset

MEMBER_DIMS = ("member", "members", "ensemble", "ens", "realization", "number", "sample")


def latest_samples(run_dir: str | Path) -> Path:
    """The newest ``*.nc`` in ``<run_dir>/samples`` (what ``hpcdiff sample`` wrote last)."""
    found = sorted(Path(run_dir, "samples").glob("*.nc"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(
            f"{Path(run_dir, 'samples')}: no samples file; run `hpcdiff sample {run_dir}` first"
        )
    return found[-1]


def _as_float(values) -> np.ndarray:
    """netCDF4 (masked) values as float32 with NaN where masked, without extra copies."""
    out = np.asarray(np.ma.getdata(values), dtype=np.float32)
    mask = np.ma.getmask(values)
    if mask is not np.ma.nomask and mask.any():
        out[mask] = np.nan
    return out


class SamplesFile:
    """A generated ensemble on disk; :meth:`slab` reads one (M, H, W) time step."""

    def __init__(self, path: str | Path, variables: Sequence[str] | None = None) -> None:
        self.path = str(path)
        self.ds = open_dataset(self.path)
        if variables is None:
            variables = [v for v in self.ds.variables if self._member_dim(v) is not None]
            if not variables:
                raise DataError("holds no variable with a member dimension", path=self.path)
        self.variables = list(variables)
        layouts = {v: self._layout(v) for v in self.variables}
        first = layouts[self.variables[0]]
        for v, layout in layouts.items():
            if layout[1:] != first[1:]:
                raise DataError(
                    f"(members, times, y, x) {layout[1:]} differ from {first[1:]} of "
                    f"{self.variables[0]!r}",
                    path=self.path,
                    variable=v,
                )
        self._layouts = layouts
        for var in self.ds.variables.values():  # chunks are read once: no 64 MiB cache each
            if var.ndim and isinstance(var.chunking(), list):  # not NetCDF3, not contiguous
                var.set_var_chunk_cache(size=CHUNK_CACHE_BYTES)
        self.members, self.n_times, self.shape = first[1], first[2], first[3]
        self.times, self.calendar = self._times(first[0])

    def _member_dim(self, name: str) -> str | None:
        for dim in self.ds.variables[name].dimensions:
            coord = self.ds.variables.get(dim)
            std = str(getattr(coord, "standard_name", "")) if coord is not None else ""
            if dim.lower() in MEMBER_DIMS or std == "realization":
                return dim
        return None

    def _layout(self, name: str) -> tuple:
        """(time dim or None, members, times, (H, W)) of variable ``name``."""
        if name not in self.ds.variables:
            raise DataError(
                f"missing from the samples file (it has {sorted(self.ds.variables)})",
                path=self.path,
                variable=name,
            )
        dims, member = self.ds.variables[name].dimensions, self._member_dim(name)
        if len(dims) not in (3, 4) or member is None or member in dims[-2:]:
            raise DataError(
                f"has dimensions {dims}; expected (member, time, y, x) with y, x last",
                path=self.path,
                variable=name,
            )
        time = next((d for d in dims[:-2] if d != member), None)
        size = self.ds.dimensions
        T = size[time].size if time else 1
        return time, size[member].size, T, (size[dims[-2]].size, size[dims[-1]].size)

    def _times(self, time_dim: str | None) -> tuple[np.ndarray | None, str]:
        if time_dim is None or time_dim not in self.ds.variables:
            return None, "standard"
        return epoch_seconds(self.ds.variables[time_dim], self.path)

    def label(self, t: int) -> str:
        """ISO time of step ``t`` (its index when the file has no time coordinate)."""
        if self.times is None:
            return str(t)
        return format_time(float(self.times[t]), self.calendar)

    def slab(self, name: str, t: int) -> np.ndarray:
        """Members (M, H, W) of variable ``name`` at time step ``t``, float32, NaN = missing."""
        var, member = self.ds.variables[name], self._member_dim(name)
        key = tuple(
            slice(None) if d in (member, *var.dimensions[-2:]) else t for d in var.dimensions
        )
        return _as_float(var[key])

    def has_truth(self, name: str, suffix: str = "truth") -> bool:
        return f"{name}_{suffix}" in self.ds.variables

    def truth(self, name: str, t: int, suffix: str = "truth") -> np.ndarray:
        """Truth (H, W) of ``name`` at step ``t`` from ``<name>_truth`` in this file (or
        another companion field such as ``<name>_regression``, by ``suffix``)."""
        var = self.ds.variables[f"{name}_{suffix}"]
        if tuple(var.shape[-2:]) != self.shape or var.ndim not in (2, 3):
            raise DataError(
                f"has shape {var.shape}; expected (time, y, x) with (y, x) = {self.shape}",
                path=self.path,
                variable=var.name,
            )
        return _as_float(var[t] if var.ndim == 3 else var[:])

    def close(self) -> None:
        self.ds.close()


class InFileTruth:
    """Truth stored alongside the members (``<variable>_truth``)."""

    def __init__(self, samples: SamplesFile) -> None:
        for v in samples.variables:
            if not samples.has_truth(v):
                raise DataError(
                    f"has no {v + '_truth'!r} variable; pass the truth with --truth FILE",
                    path=samples.path,
                    variable=v,
                )
        self.samples, self.description = samples, "in the samples file"

    def read(self, name: str, t: int) -> np.ndarray:
        return self.samples.truth(name, t)


class FileTruth:
    """Truth from CF NetCDF files (``<variable>``, or ``<variable>_truth`` when the files are
    themselves samples files), matched to the samples' times."""

    def __init__(
        self,
        paths: Sequence[str],
        samples: SamplesFile,
        dims: dict | None = None,
        levels: dict | None = None,
    ) -> None:
        paths = [p for pattern in paths for p in sorted(glob.glob(str(pattern))) or [pattern]]
        first = open_dataset(str(paths[0]))
        try:
            has = all(f"{v}_truth" in first.variables for v in samples.variables)
        finally:
            first.close()
        self.names = {v: f"{v}_truth" if has else v for v in samples.variables}
        self.source = GridSource(
            paths, list(self.names.values()), dims=dims, name="truth", levels=levels
        )
        self.description = ", ".join(map(str, paths))
        if tuple(self.source.shape) != samples.shape:
            raise DataError(
                f"grid {tuple(self.source.shape)} differs from {samples.shape} of the samples "
                f"file {samples.path}",
                path=paths[0],
                variable=self.names[samples.variables[0]],
            )
        self.index = self._match_times(samples, paths[0])

    def _match_times(self, samples: SamplesFile, path: str) -> np.ndarray:
        """Truth time index of each sample time (by value; by position without coordinates)."""
        name = next(iter(self.names.values()))
        if samples.times is None:
            if self.source.n_times < samples.n_times:
                raise DataError(
                    f"has {self.source.n_times} times, fewer than the {samples.n_times} of the "
                    f"samples file {samples.path} (which has no time coordinate to match)",
                    path=path,
                    variable=name,
                )
            return np.arange(samples.n_times)
        index = []
        for t, seconds in enumerate(samples.times):
            hit = np.flatnonzero(np.abs(self.source.times - seconds) < 0.5)
            if hit.size == 0:
                raise DataError(
                    f"has no time {samples.label(t)} of the samples file {samples.path}",
                    path=path,
                    variable=name,
                )
            index.append(int(hit[0]))
        return np.asarray(index)

    def read(self, name: str, t: int) -> np.ndarray:
        return self.source.read(self.names[name], int(self.index[t]))
