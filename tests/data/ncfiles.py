"""Writers of the small NetCDF datasets the data tests use: several files, chunked, compressed,
with NaNs, fill values, packed integers, another time unit, coarse and static grids."""

from __future__ import annotations

from pathlib import Path

import netCDF4
import numpy as np

H, W = 64, 96  # fine grid
F = 4  # coarse factor
CHUNKS = (1, 16, 32)
TIMES_PER_FILE = 5
N_FILES = 3
FILL = np.float32(-9999.0)


def fine_coords() -> tuple[np.ndarray, np.ndarray]:
    return 40.0 + 0.01 * np.arange(H), 5.0 + 0.01 * np.arange(W)


def coarse_coords() -> tuple[np.ndarray, np.ndarray]:
    lat, lon = fine_coords()
    return lat.reshape(-1, F).mean(1), lon.reshape(-1, F).mean(1)


def write_grid_file(
    path: Path,
    hours: np.ndarray | None,
    variables: dict,
    lat: np.ndarray,
    lon: np.ndarray,
    chunks=CHUNKS,
    time_units: str = "hours since 2021-01-01 00:00:00",
    unlimited: bool = True,
) -> Path:
    """Write ``variables`` = {name: (values, dtype, extra attrs)} on a (time,) lat, lon grid."""
    with netCDF4.Dataset(path, "w") as ds:
        ds.Conventions = "CF-1.8"
        if hours is not None:
            ds.createDimension("time", None if unlimited else len(hours))
            t = ds.createVariable("time", "f8", ("time",))
            t.units, t.calendar, t.axis, t.standard_name = time_units, "standard", "T", "time"
            t[:] = hours
        for name, values, std, axis in (
            ("lat", lat, "latitude", "Y"),
            ("lon", lon, "longitude", "X"),
        ):
            ds.createDimension(name, values.size)
            v = ds.createVariable(name, "f8", (name,))
            v.standard_name, v.axis = std, axis
            v.units = "degrees_north" if axis == "Y" else "degrees_east"
            v[:] = values
        dims = ("lat", "lon") if hours is None else ("time", "lat", "lon")
        for name, (values, dtype, attrs) in variables.items():
            fill = attrs.pop("_FillValue", None)
            kw = {}
            if chunks is not None:
                c = chunks[-len(dims) :]
                kw = {"zlib": True, "complevel": 1, "shuffle": True, "chunksizes": c}
            v = ds.createVariable(name, dtype, dims, fill_value=fill, **kw)
            v.set_auto_maskandscale(False)
            for key, value in attrs.items():
                v.setncattr(key, value)
            v[:] = values
    return path


def fine_values(seed: int, n: int) -> dict[str, np.ndarray]:
    """Raw stored values: a (noise float32 with NaN and fills), b (float64), c (packed int16)."""
    rng = np.random.default_rng(seed)
    a = (280 + 10 * rng.standard_normal((n, H, W))).astype(np.float32)
    a[:, 5:9, 10:20] = np.nan  # a patch of NaN
    a[0, 30, 40:45] = FILL  # some _FillValue
    b = rng.gamma(0.5, 2.0, (n, H, W))  # precipitation-like, >= 0
    c = rng.integers(-30000, 30000, (n, H, W)).astype(np.int16)
    c[:, 0, 0] = -32767  # packed fill value
    return {"a": a, "b": b, "c": c}


def fine_vars(values: dict[str, np.ndarray]) -> dict:
    return {
        "a": (values["a"], "f4", {"_FillValue": FILL, "units": "K"}),
        "b": (values["b"], "f8", {"units": "mm h-1"}),
        "c": (
            values["c"],
            "i2",
            {"_FillValue": np.int16(-32767), "scale_factor": 0.01, "add_offset": 5.0},
        ),
    }


def coarse_vars(seed: int, n: int) -> dict:
    rng = np.random.default_rng(seed + 100)
    a = (280 + rng.standard_normal((n, H // F, W // F))).astype(np.float32)
    b = rng.gamma(0.5, 2.0, (n, H // F, W // F)).astype(np.float32)
    return {"a": (a, "f4", {}), "b": (b, "f4", {})}


def write_dataset(root: Path) -> dict:
    """Fine files (3 x 5 hourly steps), coarse files (same times) and a static file."""
    root.mkdir(parents=True, exist_ok=True)
    lat, lon = fine_coords()
    clat, clon = coarse_coords()
    out = {"fine": [], "coarse": [], "static": [], "values": {}}
    for i in range(N_FILES):
        hours = np.arange(i * TIMES_PER_FILE, (i + 1) * TIMES_PER_FILE, dtype=np.float64)
        values = fine_values(i, TIMES_PER_FILE)
        out["values"][i] = values
        units = "hours since 2021-01-01 00:00:00"
        if i == 2:  # another time unit: the reader must convert
            hours, units = (hours - 10) * 60, "minutes since 2021-01-01 10:00:00"
        fine = root / f"fine_{i}.nc"
        out["fine"].append(
            write_grid_file(fine, hours, fine_vars(values), lat, lon, time_units=units)
        )
        out["coarse"].append(
            write_grid_file(
                root / f"coarse_{i}.nc",
                hours,
                coarse_vars(i, TIMES_PER_FILE),
                clat,
                clon,
                chunks=(1, 8, 8),
                time_units=units,
            )
        )
    rng = np.random.default_rng(7)
    static = {
        "orog": (rng.uniform(0, 1000, (H, W)).astype(np.float32), "f4", {}),
        "lsm": ((rng.uniform(size=(H, W)) > 0.5).astype(np.int8), "i1", {}),
    }
    out["static"].append(write_grid_file(root / "static.nc", None, static, lat, lon))
    return out
