"""Write generated ensembles: one CF-compliant NetCDF file per run, tile by tile, and PNGs.

No rank ever holds the global field: rank 0 lays the file out from the first target file
(dimension names, the time / y / x coordinates and auxiliary coordinates with their
attributes, each variable's attributes), then the ranks write their tiles in turn. Variables
are not pre-filled (``set_fill_off``): every cell is written by exactly one rank.

Curvilinear inputs (WRF ``XLAT``/``XLONG``, CF 2-D coordinates) get their 2-D latitude and
longitude written on the (y, x) mass grid at the first time, named by every variable's
``coordinates``; WRF projection attributes (``MAP_PROJ``, ``TRUELAT1``, ...) are copied as
global attributes. Staggered WRF variables are written on the mass grid (de-staggered on read).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from hpcdiff.data.cf import EPOCH
from hpcdiff.data.tiles import Tile

# Encoding attributes of the input that do not describe the decoded float32 values written
# (and every reserved "_..." attribute: fill value, quantization, storage).
NOT_COPIED = {"missing_value", "scale_factor", "add_offset", "valid_range", "valid_min",
              "valid_max", "actual_range", "stagger", "MemoryOrder"}  # fmt: skip
CHUNK = 256  # spatial chunk edge of the written variables
BAND = 1024  # rows per read / write when copying 2-D auxiliary coordinates


def _attrs(var: Any) -> dict:
    return {k: var.getncattr(k) for k in var.ncattrs() if k not in NOT_COPIED and k[0] != "_"}


def _epoch_to(values: np.ndarray, units: str, calendar: str) -> np.ndarray:
    """Seconds since 1970 in ``calendar`` as numbers in the CF time ``units``."""
    import cftime

    dates = cftime.num2date(values, EPOCH, calendar=calendar)
    return np.asarray(cftime.date2num(dates, units, calendar=calendar), dtype=np.float64)


class SamplesFile:
    """The CF NetCDF file of one sampling run: each variable ``v`` as ``v`` (member, time, y,
    x) and the target as ``v_truth`` (time, y, x), float32, with the input's dimension
    names, coordinates and attributes.

    Parameters
    ----------
    path : Path
        Written atomically (a hidden temp file renamed when every rank is done).
    variables : list of str
    source : GridSource
        The target files (``hpcdiff.data``): times, calendar, first file's metadata.
    shape : (H, W)
        Global grid.
    """

    def __init__(self, path: Path, variables: Sequence[str], source: Any, shape: Sequence[int],
                 regression: bool = False):  # fmt: skip
        self.path, self.variables, self.regression = Path(path), list(variables), regression
        self.source, self.shape = source, (int(shape[0]), int(shape[1]))
        self._tmp = self.path.with_name(f".{self.path.name}.tmp")

    def write(self, rank: int, world: int, ensemble: int, times: Sequence[int],
              ens: np.ndarray, truth: np.ndarray, tile: Tile, members: range,
              truth_too: bool, regression: np.ndarray | None = None) -> Path:  # fmt: skip
        """Collective: rank 0 lays the file out, then each rank in turn writes its tiles
        ``ens`` (E_g, T, C, h, w) of ``members`` and, if ``truth_too``, ``truth`` and the
        ``regression`` mean (T, C, h, w)."""
        from hpcdiff.distributed.collectives import barrier

        if rank == 0:
            self._guarded(self.layout, ensemble, times)
        barrier()
        for turn in range(world):
            if turn == rank:
                extra = {"truth": truth, "regression": regression} if truth_too else {}
                self._guarded(self.write_tile, tile, ens, members, extra)
            barrier()
        if rank == 0:
            os.replace(self._tmp, self.path)
        return self.path

    def _guarded(self, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except BaseException:
            self._tmp.unlink(missing_ok=True)  # no half-written file left behind
            raise

    def layout(self, ensemble: int, times: Sequence[int]) -> None:
        """Create the (temp) file: dimensions, coordinates, unfilled variables, attributes."""
        import netCDF4

        first = self.source.files[0]
        dims = first.variables[self.variables[0]].dims  # names in the input
        tdim = dims.time or "time"
        ydim, xdim = dims.mass  # WRF staggered variables are written on mass points
        H, W = self.shape
        with netCDF4.Dataset(first.path) as src, netCDF4.Dataset(self._tmp, "w") as nc:
            nc.set_fill_off()
            now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            grid = getattr(self.source, "grid", None)
            nc.setncatts({**(grid.projection if grid is not None else {}),
                          "Conventions": "CF-1.8", "title": "hpcdiff generated ensemble",
                          "source": f"hpcdiff sample; target files like {Path(first.path).name}",
                          "history": f"{now} hpcdiff sample"})  # fmt: skip
            for name, size in (("member", ensemble), (tdim, len(times)), (ydim, H), (xdim, W)):
                nc.createDimension(name, size)
            member = nc.createVariable("member", "i4", ("member",))
            member.setncatts({"standard_name": "realization", "long_name": "ensemble member"})
            member[:] = np.arange(ensemble)
            self._time(src, nc, tdim, times)
            for axis, dim in (("Y", ydim), ("X", xdim)):
                if dim in src.variables:
                    self._copy(src, nc, dim)
                else:
                    self._index(nc, dim, axis)
            coords2d = self._coords2d(src, nc, grid, (ydim, xdim))
            for name in self._auxiliary(src, {ydim, xdim}):
                if name not in coords2d:
                    self._copy(src, nc, name)
            self._variables(src, nc, (tdim, ydim, xdim), coords2d)

    @staticmethod
    def _coords2d(src: Any, nc: Any, grid: Any, dims: tuple[str, str]) -> list[str]:
        """Write the 2-D latitude/longitude of a curvilinear input on ``dims`` (its first
        time, in row bands); returns their names (empty for rectilinear inputs)."""
        if grid is None or not grid.curvilinear:
            return []
        for name, std, units in ((grid.lat, "latitude", "degrees_north"),
                                 (grid.lon, "longitude", "degrees_east")):  # fmt: skip
            var = src[name]
            out = nc.createVariable(name, "f8" if var.dtype == np.float64 else "f4", dims)
            out.setncatts({**_attrs(var), "standard_name": std, "units": units})
            lead = (0,) * (var.ndim - 2)
            for r in range(0, var.shape[-2], BAND):
                out[r : r + BAND] = var[(*lead, slice(r, r + BAND), slice(None))]
        return [grid.lat, grid.lon]

    def _variables(self, src: Any, nc: Any, dims: tuple[str, str, str],
                   coords2d: Sequence[str] = ()) -> None:  # fmt: skip
        """Unfilled float32 variables ``v`` (member, time, y, x) and ``v_truth`` (time, y, x)
        with the input variable's attributes; NaN marks missing truth."""
        chunks = tuple(min(n, CHUNK) for n in self.shape)
        for name in self.variables:
            attrs = _attrs(src[name])
            if coords2d:  # the input's may name staggered or time coordinates not written
                attrs["coordinates"] = " ".join(coords2d)
            v = nc.createVariable(
                name, "f4", ("member", *dims), zlib=True, chunksizes=(1, 1, *chunks)
            )
            v.setncatts({**attrs, "comment": "generated by hpcdiff (multi-diffusion)"})
            nan = np.float32(np.nan)
            tv = nc.createVariable(
                f"{name}_truth", "f4", dims, zlib=True, chunksizes=(1, *chunks), fill_value=nan
            )
            tv.setncatts({**attrs, "comment": "target from the input files (truth)"})
            if self.regression:
                rv = nc.createVariable(f"{name}_regression", "f4", dims, zlib=True,
                                       chunksizes=(1, *chunks), fill_value=nan)  # fmt: skip
                rv.setncatts({**attrs, "comment": "regression mean (hpcdiff regression run)"})

    def _time(self, src: Any, nc: Any, tdim: str, times: Sequence[int]) -> None:
        """The time coordinate with the input's attributes and units."""
        source = self.source
        epoch = source.times[np.asarray(times, dtype=np.int64)]
        t = nc.createVariable(tdim, "f8", (tdim,))
        attrs = _attrs(src[tdim]) if tdim in src.variables else {"standard_name": "time"}
        attrs.update(units=attrs.get("units", EPOCH), calendar=source.calendar)
        t.setncatts(attrs)
        t[:] = _epoch_to(epoch, attrs["units"], source.calendar)

    @staticmethod
    def _auxiliary(src: Any, grid_dims: set[str]) -> list[str]:
        """Auxiliary coordinates and grid mappings named by the variables, on (y, x) or
        scalar."""
        names = []
        for var in src.variables.values():
            refs = str(getattr(var, "coordinates", "")).split()
            refs += str(getattr(var, "grid_mapping", "")).split()
            names += [r for r in refs if r not in names and r in src.variables]
        return [n for n in names if set(src[n].dimensions) <= grid_dims and n not in grid_dims]

    @staticmethod
    def _copy(src: Any, nc: Any, name: str) -> None:
        """Copy variable ``name`` (attributes and values, 2-D ones in row bands)."""
        var = src[name]
        out = nc.createVariable(name, var.dtype, var.dimensions)
        out.setncatts(_attrs(var))
        if var.ndim == 2:
            for r in range(0, var.shape[0], BAND):
                out[r : r + BAND] = var[r : r + BAND]
        else:
            out[...] = var[...]

    def _index(self, nc: Any, dim: str, axis: str) -> None:
        var = nc.createVariable(dim, "f8", (dim,))
        var.axis = axis
        var[:] = np.arange(self.shape[0] if axis == "Y" else self.shape[1])

    def write_tile(self, tile: Tile, ens: np.ndarray, members: range, extra: dict) -> None:
        """Write this rank's ``ens`` (E_g, T, C, h, w) and each (T, C, h, w) field of ``extra``
        (``truth``, ``regression``: as ``<variable>_<key>``; None skipped) on ``tile``."""
        import netCDF4

        rows, cols = tile.slices()
        every = slice(members.start, members.stop, members.step)
        with netCDF4.Dataset(self._tmp, "a") as nc:
            for c, name in enumerate(self.variables):
                if len(members):
                    nc[name][every, :, rows, cols] = ens[:, :, c]
                for key, field in extra.items():
                    if field is not None:
                        nc[f"{name}_{key}"][:, rows, cols] = field[:, c]


def plot_file(path: Path, out_dir: Path, variables: list[str], pixels: int = 1024) -> list[Path]:
    """Quick-look PNGs (truth, two members, ensemble mean and std; one per variable) of the
    first time of a samples file, read every s-th cell so that at most ``pixels`` cells per
    axis (never the whole global field) are loaded."""
    import netCDF4

    from hpcdiff.data.cf import epoch_seconds, format_time
    from hpcdiff.evaluate.plots import map_coords, map_panels, plot_maps

    paths = []
    with netCDF4.Dataset(path) as nc:
        H, W = nc[variables[0]].shape[-2:]
        s = max(1, math.ceil(max(H, W) / pixels))
        tdim = nc[variables[0]].dimensions[1]
        seconds, calendar = epoch_seconds(nc[tdim], str(path))
        time = format_time(seconds[0], calendar)
        coords = map_coords(nc, variables[0], s)
        for name in variables:
            ens = np.ma.filled(nc[name][:, 0, ::s, ::s].astype(np.float32), np.nan)
            truth = np.ma.filled(nc[f"{name}_truth"][0, ::s, ::s].astype(np.float32), np.nan)
            mean = None
            if f"{name}_regression" in nc.variables:
                mean = np.ma.filled(nc[f"{name}_regression"][0, ::s, ::s].astype(np.float32),
                                    np.nan)  # fmt: skip
            panels = map_panels(ens, truth, 2, None if mean is None else ("regression", mean))
            paths.append(plot_maps(out_dir / f"{name}.png", name, time, panels, coords))
    return paths
