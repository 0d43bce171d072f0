"""The synthetic dataset as WRF output: ``wrfout_d0N_YYYY-MM-DD_HH:MM:SS`` files, as WRF writes.

Two domains on one Lambert conformal projection (spherical earth, R = 6370 km like WRF): the
fine domain ``d02`` (``shape`` mass points, DX from the lat/lon box) nested in the coarse
``d01`` (``coarse_factor`` times coarser, the same area; ``I_PARENT_START = J_PARENT_START =
1``). Each file is NetCDF3 64-bit offset (WRF's default ``io_form_history = 2``) with

* ``Times(Time, DateStrLen)`` characters and ``XTIME`` (minutes since the simulation start);
* ``XLAT``/``XLONG`` (Time, south_north, west_east) and their ``_U``/``_V`` staggered twins;
* ``T2``, ``U10``, ``V10``, ``PREC_ACC_NC`` (mm per hour) on mass points, ``U``/``V``
  on the staggered C grid with two ``bottom_top`` levels, ``HGT``/``LANDMASK`` at every time;
* the projection and nesting in global attributes (``MAP_PROJ = 1``, ``TRUELAT1``, ...).

The fields are the ones of :mod:`hpcdiff.data.synth`, evaluated at the domain's XLAT/XLONG.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import netCDF4
import numpy as np
import yaml

from hpcdiff.data.synth import (
    SynthConfig,
    _band,
    _fields,
    block_mean,
    field_block,
    static_block,
)

EARTH_RADIUS = 6370e3  # m, WRF's sphere
NAMES = {"t2m": "T2", "u10": "U10", "v10": "V10", "tp": "PREC_ACC_NC"}
STAGGERED = {"u10": "U", "v10": "V"}  # written too, from the same wind, on the C grid
ALOFT = (1.0, 1.35)  # wind factor of the two bottom_top levels of U and V
_ATTRS = {
    "T2": ("K", "TEMP at 2 M"),
    "U10": ("m s-1", "U at 10 M"),
    "V10": ("m s-1", "V at 10 M"),
    "PREC_ACC_NC": ("mm", "ACCUMULATED GRID SCALE PRECIPITATION OVER prec_acc_dt PERIODS"),
    "U": ("m s-1", "x-wind component"),
    "V": ("m s-1", "y-wind component"),
    "HGT": ("m", "Terrain Height"),
    "LANDMASK": ("", "LAND MASK (1 FOR LAND, 0 FOR WATER)"),
}


class Lambert:
    """Lambert conformal conic on a sphere (Snyder 1987, eqs. 15-1 to 15-5 and 14-4)."""

    def __init__(self, truelat1: float, truelat2: float, stand_lon: float, ref_lat: float):
        p1, p2 = np.radians(truelat1), np.radians(truelat2)
        if np.isclose(p1, p2):
            self.n = np.sin(p1)
        else:
            self.n = np.log(np.cos(p1) / np.cos(p2)) / np.log(
                np.tan(np.pi / 4 + p2 / 2) / np.tan(np.pi / 4 + p1 / 2)
            )
        self.F = np.cos(p1) * np.tan(np.pi / 4 + p1 / 2) ** self.n / self.n
        self.lon0 = stand_lon
        self.rho0 = self._rho(ref_lat)

    def _rho(self, lat):
        return EARTH_RADIUS * self.F / np.tan(np.pi / 4 + np.radians(lat) / 2) ** self.n

    def forward(self, lat, lon):
        """(x, y) in metres of (lat, lon) in degrees."""
        theta = self.n * np.radians(lon - self.lon0)
        rho = self._rho(lat)
        return rho * np.sin(theta), self.rho0 - rho * np.cos(theta)

    def inverse(self, x, y):
        """(lat, lon) in degrees of (x, y) in metres."""
        s = np.sign(self.n)
        rho = s * np.hypot(x, self.rho0 - y)
        theta = np.arctan2(s * x, s * (self.rho0 - y))
        lat = 2 * np.arctan((EARTH_RADIUS * self.F / rho) ** (1 / self.n)) - np.pi / 2
        return np.degrees(lat), self.lon0 + np.degrees(theta / self.n)


def domain(cfg: SynthConfig, factor: int) -> dict:
    """Projection, spacing and 2-D coordinate functions of the domain ``factor`` x coarser."""
    south, north, west, east = cfg.box
    cen_lat, cen_lon = (south + north) / 2, (west + east) / 2
    proj = Lambert(south, north, cen_lon, cen_lat)
    ny, nx = cfg.shape[0] // factor, cfg.shape[1] // factor
    dx = 111_200.0 * (north - south) / cfg.shape[0] * factor
    xc, yc = proj.forward(cen_lat, cen_lon)

    def coords(rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(lat, lon) at fractional mass-grid (row, col) indices, broadcast."""
        x = xc + (np.asarray(cols, np.float64) - (nx - 1) / 2) * dx
        y = yc + (np.asarray(rows, np.float64) - (ny - 1) / 2) * dx
        return proj.inverse(x, y)

    attrs = {
        "TITLE": " OUTPUT FROM hpcdiff data synth --format wrf (WRF-shaped, synthetic)",
        "START_DATE": _wrf_time(cfg, 0), "SIMULATION_START_DATE": _wrf_time(cfg, 0),
        "WEST-EAST_GRID_DIMENSION": nx + 1, "SOUTH-NORTH_GRID_DIMENSION": ny + 1,
        "BOTTOM-TOP_GRID_DIMENSION": len(ALOFT) + 1, "DX": np.float32(dx),
        "DY": np.float32(dx), "GRID_ID": 2 if factor == 1 else 1,
        "PARENT_ID": 1 if factor == 1 else 0, "I_PARENT_START": 1, "J_PARENT_START": 1,
        "PARENT_GRID_RATIO": cfg.coarse_factor if factor == 1 else 1,
        "CEN_LAT": np.float32(cen_lat), "CEN_LON": np.float32(cen_lon),
        "TRUELAT1": np.float32(south), "TRUELAT2": np.float32(north),
        "MOAD_CEN_LAT": np.float32(cen_lat), "STAND_LON": np.float32(cen_lon),
        "POLE_LAT": np.float32(90.0), "POLE_LON": np.float32(0.0), "MAP_PROJ": 1,
        "MAP_PROJ_CHAR": "Lambert Conformal",
    }  # fmt: skip
    return {"shape": (ny, nx), "coords": coords, "attrs": attrs}


def _wrf_time(cfg: SynthConfig, step: int) -> str:
    when = datetime.fromisoformat(cfg.start) + timedelta(hours=step * cfg.step_hours)
    return when.strftime("%Y-%m-%d_%H:%M:%S")


def _create(path: Path, cfg: SynthConfig, dom: dict, steps: np.ndarray) -> netCDF4.Dataset:
    """A WRF history file with its dimensions, times, coordinates and empty fields."""
    ny, nx = dom["shape"]
    ds = netCDF4.Dataset(path, "w", format="NETCDF3_64BIT_OFFSET")
    ds.setncatts(dom["attrs"])
    for name, size in (("Time", None), ("DateStrLen", 19), ("south_north", ny),
                       ("west_east", nx), ("south_north_stag", ny + 1),
                       ("west_east_stag", nx + 1), ("bottom_top", len(ALOFT))):  # fmt: skip
        ds.createDimension(name, size)
    times = ds.createVariable("Times", "S1", ("Time", "DateStrLen"))
    times[:] = netCDF4.stringtochar(np.array([_wrf_time(cfg, s) for s in steps], "S19"))
    xtime = ds.createVariable("XTIME", "f4", ("Time",))
    since = datetime.fromisoformat(cfg.start).strftime("%Y-%m-%d %H:%M:%S")
    xtime.setncatts(
        {
            "FieldType": 104,
            "MemoryOrder": "0  ",
            "stagger": "",
            "units": f"minutes since {since}",
            "description": f"minutes since {since}",
        }
    )
    xtime[:] = np.asarray(steps, np.float64) * cfg.step_hours * 60.0  # fmt: skip
    grids = {"": ("south_north", "west_east"), "_U": ("south_north", "west_east_stag"),
             "_V": ("south_north_stag", "west_east")}  # fmt: skip
    for suffix, dims in grids.items():
        for name, units, what in (
            ("XLAT", "degree_north", "LATITUDE, SOUTH IS NEGATIVE"),
            ("XLONG", "degree_east", "LONGITUDE, WEST IS NEGATIVE"),
        ):
            v = ds.createVariable(name + suffix, "f4", ("Time", *dims))
            v.setncatts({"FieldType": 104, "MemoryOrder": "XY ", "description": what,
                         "units": units, "stagger": suffix[1:]})  # fmt: skip
    mass = ("Time", "south_north", "west_east")
    fields = [NAMES[v] for v in cfg.variables] + ["HGT", "LANDMASK"]
    for name in fields:
        v = ds.createVariable(name, "f4", mass)
        units, what = _ATTRS[name]
        v.setncatts({"FieldType": 104, "MemoryOrder": "XY ", "description": what,
                     "units": units, "stagger": "", "coordinates": "XLONG XLAT XTIME"})  # fmt: skip
    for wind, name in STAGGERED.items():
        if wind not in cfg.variables:
            continue
        suffix = "_U" if name == "U" else "_V"
        v = ds.createVariable(name, "f4", ("Time", "bottom_top", *grids[suffix]))
        units, what = _ATTRS[name]
        v.setncatts({"FieldType": 104, "MemoryOrder": "XYZ", "description": what,
                     "units": units, "stagger": suffix[1:],
                     "coordinates": f"XLONG{suffix} XLAT{suffix} XTIME"})  # fmt: skip
    return ds


def _stagger(mass: np.ndarray, axis: int) -> np.ndarray:
    """C-grid values from mass values: means of neighbours inside, the edge values outside."""
    inner = 0.5 * (np.take(mass, range(mass.shape[axis] - 1), axis) + np.take(
        mass, range(1, mass.shape[axis]), axis))  # fmt: skip
    first, last = np.take(mass, [0], axis), np.take(mass, [-1], axis)
    return np.concatenate([first, inner, last], axis=axis)


def _write_coords(ds: netCDF4.Dataset, dom: dict, n_times: int) -> None:
    ny, nx = dom["shape"]
    r, c = np.arange(ny)[:, None], np.arange(nx)[None, :]
    for suffix, (rows, cols) in {"": (r, c), "_U": (r, np.arange(nx + 1)[None, :] - 0.5),
                                 "_V": (np.arange(ny + 1)[:, None] - 0.5, c)}.items():  # fmt: skip
        lat, lon = dom["coords"](rows, cols)
        for t in range(n_times):
            ds["XLAT" + suffix][t] = lat.astype(np.float32)
            ds["XLONG" + suffix][t] = lon.astype(np.float32)


def _write_file(cfg, fields, fine_path: Path, coarse_path: Path, steps) -> None:
    """One fine (d02) and one coarse (d01) file with the times ``steps``; the coarse fields
    are block means of the fine ones (so the nest and its parent agree)."""
    f = cfg.coarse_factor
    fine_dom, coarse_dom = domain(cfg, 1), domain(cfg, f)
    hours = np.asarray(steps, dtype=np.float64) * cfg.step_hours
    fine = _create(fine_path, cfg, fine_dom, steps)
    coarse = _create(coarse_path, cfg, coarse_dom, steps)
    try:
        for ds, dom in ((fine, fine_dom), (coarse, coarse_dom)):
            _write_coords(ds, dom, len(steps))
        ny, nx = cfg.shape
        for t_local, h in enumerate(hours):
            mass: dict[str, list] = {}
            for r0 in range(0, ny, _band(cfg)):
                rows = slice(r0, min(r0 + _band(cfg), ny))
                lat, lon = fine_dom["coords"](np.arange(rows.start, rows.stop)[:, None],
                                              np.arange(nx)[None, :])  # fmt: skip
                st = static_block(cfg, fields, lat, lon, rows)
                crows = slice(rows.start // f, rows.stop // f)
                blocks = {"HGT": st["orography"], "LANDMASK": st["lsm"]}
                for name in cfg.variables:
                    blocks[NAMES[name]] = field_block(cfg, fields, name, lat, lon, rows, h, st)
                for name, block in blocks.items():
                    fine[name][t_local, rows, :] = block.astype(np.float32)
                    coarse[name][t_local, crows, :] = block_mean(block, f).astype(np.float32)
                    mass.setdefault(name, []).append(block)
            for wind, name in STAGGERED.items():  # whole-field: the C grid couples rows
                if wind in cfg.variables:
                    wind_field = np.concatenate(mass[NAMES[wind]])
                    _write_staggered(fine, coarse, name, wind_field, f, t_local)
    finally:
        fine.close()
        coarse.close()


def _write_staggered(fine, coarse, name: str, wind: np.ndarray, f: int, t: int) -> None:
    axis = 1 if name == "U" else 0
    for level, factor in enumerate(ALOFT):
        for ds, values in ((fine, wind), (coarse, block_mean(wind, f))):
            ds[name][t, level] = (_stagger(values, axis) * factor).astype(np.float32)


def write_wrf(cfg: SynthConfig, log=None) -> dict[str, list[str]]:
    """Write the WRF-shaped dataset of ``cfg`` and its ``data.yaml``; returns the paths."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fields = _fields(cfg)
    paths: dict[str, list[str]] = {"fine": [], "coarse": [], "static": []}
    for steps in np.array_split(np.arange(cfg.n_times), cfg.n_files):
        stamp = _wrf_time(cfg, int(steps[0]))
        fine, coarse = out / f"wrfout_d02_{stamp}", out / f"wrfout_d01_{stamp}"
        _write_file(cfg, fields, fine, coarse, steps)
        paths["fine"].append(str(fine))
        paths["coarse"].append(str(coarse))
        if log is not None:
            log(f"wrote {fine} and {coarse} ({steps.size} times)")
    paths["static"] = [paths["fine"][0]]
    section = {"data": data_section(cfg, paths)}
    (out / "data.yaml").write_text(yaml.safe_dump(section, sort_keys=False))
    return paths


def data_section(cfg: SynthConfig, paths: dict[str, list[str]]) -> dict:
    """The ``data:`` section: staggered U/V (lowest level) in place of U10/V10."""
    from hpcdiff.data.synth import data_section as cf_section

    section = cf_section(cfg, paths)
    names = [STAGGERED.get(v, NAMES[v]) for v in cfg.variables]
    out = Path(cfg.out_dir)
    section.update(
        files=[str(out / "wrfout_d02_*")],
        variables=names,
        condition_files=[str(out / "wrfout_d01_*")],
        condition_variables=list(names),
        static_files=paths["static"],
        static_variables=["HGT", "LANDMASK"],
        levels={"bottom_top": 0},
        log1p_variables=["PREC_ACC_NC"] if "tp" in cfg.variables else [],
    )
    return section
