"""The embedded km-scale dataset: CF-compliant multi-file NetCDF written block by block.

``write_dataset`` writes, into ``out_dir``:

* ``static.nc``: ``orography`` (m, a fractal field over land, 0 over sea) and ``lsm`` (the
  real 1 km land-sea mask of the lat/lon box, from the ``global-land-mask`` package);
* ``fine_NNN.nc``: hourly fields on the high-resolution grid, ``n_files`` files along time:
  ``t2m`` (K: meridional gradient, a 6.5 K/km lapse rate over orography, a diurnal cycle
  following local solar time, strong over land, plus a synoptic anomaly), ``u10``/``v10``
  (m/s: a mean flow plus a rotational k^-5/3 turbulent part), ``tp`` (mm/h: intermittent,
  positive, enhanced over orography), and optionally ``sst`` (K, missing over land);
* ``coarse_NNN.nc``: the same variables averaged over ``coarse_factor`` x ``coarse_factor``
  blocks (the downscaling condition);
* ``data.yaml``: a ``data:`` config section for these files.

Every field is generated one band of chunk rows at a time (see :mod:`hpcdiff.data.fields`),
so grids up to 8192 x 8192 never sit in memory. Variables are zlib-compressed with shuffle
and chunked ``(1, chunk, chunk)`` like real archives; the output depends only on the seed.

``format`` picks the storage: ``netcdf4`` (above), ``netcdf3`` (the same CF files in the
NetCDF3 64-bit offset format: no chunks, no compression, as legacy archives come) or ``wrf``
(WRF output as WRF writes it, see :mod:`hpcdiff.data.synth_wrf`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import netCDF4
import numpy as np
import yaml

from hpcdiff.data.fields import SpectralField

VARIABLES = {
    "t2m": ("air_temperature", "K", "2 m air temperature"),
    "u10": ("eastward_wind", "m s-1", "10 m eastward wind"),
    "v10": ("northward_wind", "m s-1", "10 m northward wind"),
    "tp": ("lwe_precipitation_rate", "mm h-1", "total precipitation rate"),
    "sst": ("sea_surface_temperature", "K", "sea surface temperature (missing over land)"),
}
DEFAULT_VARIABLES = ("t2m", "u10", "v10", "tp")
FILL = np.float32(1.0e20)
LAPSE_RATE = 6.5e-3  # K / m
FORMATS = ("netcdf4", "netcdf3", "wrf")


@dataclass
class SynthConfig:
    """Size, place, time axis and storage of the synthetic dataset."""

    out_dir: str = "data/synth"
    shape: tuple[int, int] = (256, 256)
    n_times: int = 96
    n_files: int = 4
    variables: tuple[str, ...] = DEFAULT_VARIABLES
    box: tuple[float, float, float, float] = (54.0, 58.0, 7.0, 13.0)  # south, north, west, east
    start: str = "2020-06-01T00:00:00"
    step_hours: float = 1.0
    coarse_factor: int = 8
    chunk: int = 128
    complevel: int = 4
    significant_digits: int | None = 3
    seed: int = 0
    format: str = "netcdf4"  # netcdf4 | netcdf3 (64-bit offset) | wrf
    fields: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        ny, nx = (int(s) for s in self.shape)
        self.shape = (ny, nx)
        if ny < 8 or nx < 8 or ny > 65536 or nx > 65536:
            raise ValueError(f"shape must be within [8, 65536] per axis, got {self.shape}")
        unknown = [v for v in self.variables if v not in VARIABLES]
        if unknown or not self.variables:
            raise ValueError(f"variables must be among {sorted(VARIABLES)}, got {self.variables}")
        f = self.coarse_factor
        if f < 1 or ny % f or nx % f:
            raise ValueError(f"coarse_factor {f} must divide the grid shape {self.shape}")
        if self.chunk < 1 or not 1 <= self.n_files <= self.n_times:
            raise ValueError(f"need chunk >= 1 and 1 <= n_files <= n_times, got {self}")
        south, north, west, east = self.box
        if not (-90 <= south < north <= 90 and -180 <= west < east <= 180):
            raise ValueError(f"box must be (south, north, west, east) in degrees, got {self.box}")
        self.chunk = min(self.chunk, ny, nx)
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if self.format == "wrf" and "sst" in self.variables:
            raise ValueError("sst has no WRF output counterpart; leave it out with --format wrf")


def _coords(cfg: SynthConfig) -> tuple[np.ndarray, np.ndarray]:
    """Cell-centre latitudes (south to north) and longitudes of the fine grid."""
    (ny, nx), (south, north, west, east) = cfg.shape, cfg.box
    lat = south + (np.arange(ny) + 0.5) * (north - south) / ny
    lon = west + (np.arange(nx) + 0.5) * (east - west) / nx
    return lat, lon


def _fields(cfg: SynthConfig) -> dict[str, SpectralField]:
    """The random fields behind every variable, seeded by (seed, name)."""
    ny, nx = cfg.shape
    cell_km = 111.0 * (cfg.box[1] - cfg.box[0]) / ny
    flow = (2.0 * 3.6 / cell_km, 6.0 * 3.6 / cell_km)  # (V, U): 2 and 6 m/s in cells per hour

    def rng(name: str) -> np.random.Generator:
        return np.random.default_rng([cfg.seed, sum(map(ord, name))])

    shape = cfg.shape
    return {
        "orography": SpectralField.make(rng("orography"), shape, beta=2.0),
        "anomaly": SpectralField.make(rng("anomaly"), shape, 3.0, flow=flow, drift=0.02),
        "psi": SpectralField.make(rng("psi"), shape, 5 / 3 + 2, flow=flow, drift=0.05),
        "rain": SpectralField.make(rng("rain"), shape, 2.5, flow=flow, drift=0.1),
    }


def land_mask(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """(h, W) float32 land (1) / sea (0) at broadcastable latitudes and longitudes."""
    from global_land_mask import globe  # loads a ~1 GB global 1 km mask on first import

    lat2, lon2 = np.broadcast_arrays(lat, lon)
    return globe.is_land(lat2, lon2).astype(np.float32)


def static_block(cfg, fields, lat, lon, rows: slice) -> dict[str, np.ndarray]:
    """Orography and land-sea mask on ``rows``; ``lat``/``lon`` broadcast to (h, W) there."""
    lsm = land_mask(lat, lon)
    relief = fields["orography"].block(rows, cfg.shape[1], 0.0)
    orog = lsm * 400.0 * np.log1p(np.exp(1.5 * relief))  # smooth, positive, ~0-1500 m
    return {"orography": orog.astype(np.float32), "lsm": lsm}


def _psi_scale(cfg: SynthConfig, psi: SpectralField) -> float:
    """Streamfunction scale giving a 3 m/s rms turbulent wind (cells/h units cancel)."""
    k2 = (np.abs(psi.coeff) ** 2 * (psi.ky[:, None] ** 2 + psi.kx[None, :] ** 2)).sum() / 2
    return 3.0 / math.sqrt(2 * k2)


def field_block(cfg, fields, name, lat, lon, rows, hours, static) -> np.ndarray:
    """Values of variable ``name`` on ``rows`` (all columns) at ``hours`` since the start;
    ``lat``/``lon`` are the coordinates of those rows, broadcastable to (h, W)."""
    nx = cfg.shape[1]
    lat_r, lon = lat, lon
    if name == "t2m" or name == "sst":
        utc = (hours * 1.0 + _start_hour(cfg)) % 24
        solar = (utc + lon / 15.0) % 24
        diurnal = np.cos(2 * np.pi * (solar - 15.0) / 24.0)
        land = static["lsm"]
        base = 290.0 - 0.6 * (lat_r - 45.0) + 2.0 * fields["anomaly"].block(rows, nx, hours)
        if name == "sst":
            return np.where(land > 0.5, np.nan, base - 2.0 + 0.3 * diurnal)
        return base - LAPSE_RATE * static["orography"] + (1.0 + 5.0 * land) * diurnal
    if name in ("u10", "v10"):
        psi = fields["psi"]
        scale = _psi_scale(cfg, psi)
        if name == "u10":
            return 6.0 - scale * psi.block(rows, nx, hours, deriv="y")
        return 2.0 + scale * psi.block(rows, nx, hours, deriv="x")
    if name == "tp":
        wet = fields["rain"].block(rows, nx, hours) + 0.002 * static["orography"]
        return 4.0 * np.maximum(wet - 0.9, 0.0) ** 1.5
    raise ValueError(f"unknown synthetic variable {name!r}")


def _start_hour(cfg: SynthConfig) -> float:
    from datetime import datetime

    d = datetime.fromisoformat(cfg.start)
    return d.hour + d.minute / 60.0


def _create(path: Path, cfg: SynthConfig, lat, lon, names, hours=None) -> netCDF4.Dataset:
    """A new CF file with (time,) lat, lon coordinates and empty chunked variables ``names``."""
    nc4 = cfg.format == "netcdf4"
    ds = netCDF4.Dataset(path, "w", format="NETCDF4" if nc4 else "NETCDF3_64BIT_OFFSET")
    ds.setncatts(
        {
            "Conventions": "CF-1.8",
            "title": "hpcdiff synthetic km-scale dataset",
            "source": f"hpcdiff data synth (seed {cfg.seed})",
        }
    )
    dims = ("lat", "lon") if hours is None else ("time", "lat", "lon")
    if hours is not None:
        ds.createDimension("time", None)
        t = ds.createVariable("time", "f8", ("time",))
        t.setncatts({"standard_name": "time", "axis": "T", "calendar": "proleptic_gregorian"})
        t.units = f"hours since {cfg.start.replace('T', ' ')}"
        t[:] = hours
    for name, values, std, units, axis in (
        ("lat", lat, "latitude", "degrees_north", "Y"),
        ("lon", lon, "longitude", "degrees_east", "X"),
    ):
        ds.createDimension(name, values.size)
        v = ds.createVariable(name, "f8", (name,))
        v.setncatts({"standard_name": std, "units": units, "axis": axis, "long_name": std})
        v[:] = values
    c = min(cfg.chunk, lat.size, lon.size)
    chunks = (c, c) if hours is None else (1, c, c)
    for name in names:
        std, units, long_name = _ATTRS[name]
        storage = dict(
            zlib=cfg.complevel > 0,
            complevel=max(cfg.complevel, 1),
            shuffle=True,
            chunksizes=chunks,
            significant_digits=cfg.significant_digits if hours is not None else None,
        )
        v = ds.createVariable(name, "f4", dims, fill_value=FILL, **(storage if nc4 else {}))
        v.setncatts({"standard_name": std, "units": units, "long_name": long_name})
    return ds


_ATTRS = {
    **VARIABLES,
    "orography": ("surface_altitude", "m", "surface altitude"),
    "lsm": ("land_binary_mask", "1", "land-sea mask (1 = land)"),
}


def block_mean(block: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor x factor`` cells ignoring NaN (NaN where all are NaN)."""
    h, w = block.shape
    cells = block.reshape(h // factor, factor, w // factor, factor)
    valid = np.isfinite(cells)
    total = np.where(valid, cells, 0.0).sum(axis=(1, 3))
    count = valid.sum(axis=(1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _band(cfg: SynthConfig) -> int:
    """Rows generated at once: whole chunk rows and whole coarse cells."""
    return math.lcm(cfg.chunk, cfg.coarse_factor)


def _write_static(cfg: SynthConfig, fields, lat, lon, out: Path) -> Path:
    path = out / "static.nc"
    ds = _create(path, cfg, lat, lon, ("orography", "lsm"))
    try:
        for r0 in range(0, cfg.shape[0], _band(cfg)):
            rows = slice(r0, min(r0 + _band(cfg), cfg.shape[0]))
            block = static_block(cfg, fields, lat[rows][:, None], lon[None, :], rows)
            for name, values in block.items():
                ds[name][rows, :] = values
    finally:
        ds.close()
    return path


def _write_times(cfg, fields, lat, lon, static_path: Path, fine_path, coarse_path, steps):
    f = cfg.coarse_factor
    clat, clon = lat.reshape(-1, f).mean(1), lon.reshape(-1, f).mean(1)
    hours = np.asarray(steps, dtype=np.float64) * cfg.step_hours
    fine = _create(fine_path, cfg, lat, lon, cfg.variables, hours)
    coarse = _create(coarse_path, cfg, clat, clon, cfg.variables, hours)
    static = netCDF4.Dataset(static_path)
    try:
        for t_local, h in enumerate(hours):
            for r0 in range(0, cfg.shape[0], _band(cfg)):
                rows = slice(r0, min(r0 + _band(cfg), cfg.shape[0]))
                st = {k: np.asarray(static[k][rows, :], np.float64) for k in ("lsm", "orography")}
                crows = slice(rows.start // f, rows.stop // f)
                for name in cfg.variables:
                    block = field_block(
                        cfg, fields, name, lat[rows][:, None], lon[None, :], rows, h, st
                    )
                    fine[name][t_local, rows, :] = block.astype(np.float32)
                    coarse[name][t_local, crows, :] = block_mean(block, f).astype(np.float32)
    finally:
        for ds in (fine, coarse, static):
            ds.close()


def write_dataset(cfg: SynthConfig, log=None) -> dict[str, list[str]]:
    """Write the dataset described by ``cfg``; returns ``{'fine', 'coarse', 'static': paths}``."""
    if cfg.format == "wrf":
        from hpcdiff.data.synth_wrf import write_wrf

        return write_wrf(cfg, log)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lat, lon = _coords(cfg)
    fields = _fields(cfg)
    static = _write_static(cfg, fields, lat, lon, out)
    paths: dict[str, list[str]] = {"fine": [], "coarse": [], "static": [str(static)]}
    for i, steps in enumerate(np.array_split(np.arange(cfg.n_times), cfg.n_files)):
        fine, coarse = out / f"fine_{i:03d}.nc", out / f"coarse_{i:03d}.nc"
        _write_times(cfg, fields, lat, lon, static, fine, coarse, steps)
        paths["fine"].append(str(fine))
        paths["coarse"].append(str(coarse))
        if log is not None:
            log(f"wrote {fine} and {coarse} ({steps.size} times)")
    section = data_section(cfg, paths)
    (out / "data.yaml").write_text(yaml.safe_dump({"data": section}, sort_keys=False))
    return paths


def _iso(cfg: SynthConfig, step: int) -> str:
    from datetime import datetime, timedelta

    when = datetime.fromisoformat(cfg.start) + timedelta(hours=step * cfg.step_hours)
    return when.isoformat()


def data_section(cfg: SynthConfig, paths: dict[str, list[str]]) -> dict:
    """A ``data:`` config section for the written files; the last file is the valid split."""
    splits = np.array_split(np.arange(cfg.n_times), cfg.n_files)
    first_valid = int(splits[-1][0]) if cfg.n_files > 1 else cfg.n_times
    out = Path(cfg.out_dir)
    section = {
        "files": [str(out / "fine_*.nc")],
        "variables": list(cfg.variables),
        "condition_files": [str(out / "coarse_*.nc")],
        "condition_variables": list(cfg.variables),
        "static_files": [str(out / "static.nc")],
        "static_variables": ["orography", "lsm"],
        "train_time": [_iso(cfg, 0), _iso(cfg, max(first_valid - 1, 0))],
        "valid_time": [_iso(cfg, first_valid), _iso(cfg, cfg.n_times - 1)],
        "stats_file": str(out / "stats.json"),
        "log1p_variables": ["tp"] if "tp" in cfg.variables else [],
        "patch_shape": [min(64, cfg.shape[0]), min(64, cfg.shape[1])],
    }
    if cfg.n_files == 1:
        section["valid_time"] = section["train_time"]
    if "sst" in cfg.variables:
        section["all_nan"] = "mask"
    return section
