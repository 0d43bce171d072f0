"""`hpcdiff data inspect` warnings, CF dimension discovery, and the `data:` config section."""

from __future__ import annotations

import datetime

import netCDF4
import numpy as np
import pytest
from ncfiles import fine_coords, write_grid_file

from hpcdiff.cli import main
from hpcdiff.config import ConfigError, from_dict
from hpcdiff.data.cf import discover_dims
from hpcdiff.data.config import DataConfig
from hpcdiff.data.errors import DataError
from hpcdiff.data.inspect import inspect_paths


def layout_file(path, chunks):
    lat, lon = fine_coords()
    values = {"v": (np.zeros((4, lat.size, lon.size), np.float32), "f4", {})}
    hours = np.arange(4.0)
    return write_grid_file(path, hours, values, lat, lon, chunks=chunks, unlimited=bool(chunks))


def test_inspect_reports_layout_and_warns(dataset, tmp_path, capsys):
    report, n = inspect_paths([str(dataset["fine"][0])])
    assert "a (time, lat, lon) float32 [K] : chunks (1, 16, 32) = 2.0 KiB, zlib level 1" in report
    assert n == 3 and all(
        f"{v}: chunks of {kib} KiB are small" in report
        for v, kib in [("a", "2.0"), ("b", "4.0"), ("c", "1.0")]
    )
    assert inspect_paths([str(layout_file(tmp_path / "good.nc", (1, 64, 96)))])[1] == 0
    # A coarse 16 x 16 field (the quickstart's condition files): 1 KiB chunks, but each holds
    # a whole time step, so the suggested rechunking is the file's own layout: no warning.
    # Half-size chunks on the same grid can still grow, so they are warned about.
    lat, lon = np.linspace(40.0, 41.0, 16), np.linspace(5.0, 6.0, 16)
    values = {"v": (np.zeros((4, 16, 16), np.float32), "f4", {})}
    for name, chunks, expected in (("coarse.nc", (1, 16, 16), 0), ("half.nc", (1, 8, 8), 1)):
        path = write_grid_file(tmp_path / name, np.arange(4.0), values, lat, lon, chunks=chunks,
                               unlimited=True)  # fmt: skip
        report, n = inspect_paths([str(path)])
        assert n == expected, report
    assert "nccopy -c time/1,lat/16,lon/16 -d 1 -s half.nc out.nc" in report
    assert "time (time) float64 axis=time" in report and "2021-01-01T00:00:00" in report
    cases = {
        "contiguous.nc": (None, "stored contiguously"),
        "timechunks.nc": ((4, 64, 96), "chunks span 4 steps of 'time'"),
        "tiny.nc": ((1, 8, 8), "chunks of 256 B are small"),
    }
    for name, (chunks, warning) in cases.items():
        path = layout_file(tmp_path / name, chunks)
        report, n = inspect_paths([str(path)], patch=(32, 32))
        assert n >= 1 and warning in report
        assert f"nccopy -c time/1,lat/32,lon/32 -d 1 -s {name} out.nc" in report
    assert main(["data", "inspect", str(tmp_path / "tiny.nc")]) == 0
    assert "1 file(s), 1 warning(s)" in capsys.readouterr().out
    assert main(["data", "inspect", str(tmp_path / "none.nc")]) == 2


def test_dims_from_cf_attributes_and_overrides(tmp_path):
    path = tmp_path / "odd.nc"
    with netCDF4.Dataset(path, "w") as ds:
        for name, size in (("step", None), ("north", 4), ("east", 5), ("lev", 1)):
            ds.createDimension(name, size)
        ds.createVariable("step", "f8", ("step",)).units = "days since 2000-01-01"
        ds.createVariable("north", "f8", ("north",)).standard_name = "projection_y_coordinate"
        ds.createVariable("east", "f8", ("east",)).axis = "X"
        ds.createVariable("v", "f4", ("step", "lev", "east", "north"))
        ds.createVariable("w", "f4", ("step", "north", "east", "lev"))
        ds.createVariable("s", "f4", ("north", "east"))
    with netCDF4.Dataset(path) as ds:
        dims = discover_dims(ds, "v")
        assert (dims.time, dims.y, dims.x, dims.squeezed()) == ("step", "north", "east", ("lev",))
        swapped = discover_dims(ds, "w", {"y": "east", "x": "north"})
        assert (swapped.y, swapped.x) == ("east", "north")
        with pytest.raises(DataError, match="variable 's': cannot find the time dimension"):
            discover_dims(ds, "s", path="odd.nc")
        assert discover_dims(ds, "s", timed=False).order == ("north", "east")


def test_transposed_variable_reads_in_y_x_order(tmp_path):
    from hpcdiff.data.reader import GridSource

    path = tmp_path / "xy.nc"
    data = np.arange(2 * 5 * 4, dtype=np.float32).reshape(2, 5, 4)  # (time, x, y)
    with netCDF4.Dataset(path, "w") as ds:
        ds.createDimension("time", None)
        ds.createDimension("x", 5)
        ds.createDimension("y", 4)
        t = ds.createVariable("time", "f8", ("time",))
        t.units, t[:] = "hours since 2000-01-01", [0, 1]
        ds.createVariable("v", "f4", ("time", "x", "y"))[:] = data
    source = GridSource([path], ["v"])
    assert source.shape == (4, 5)
    np.testing.assert_array_equal(source.read("v", 1), data[1].T)


def test_config_validation_names_the_key():
    base = {"files": ["x*.nc"], "variables": ["t2m", "tp"]}
    cfg = from_dict(
        DataConfig, {**base, "train_time": [datetime.date(2020, 1, 1), "2020-01-02T06:00"]}, "data"
    )
    assert cfg.train_time == ("2020-01-01", "2020-01-02T06:00")
    assert cfg.time_range("valid") == (None, None)
    cases = [
        ({"bogus": 1}, "'data.bogus' is unknown"),
        ({"batch_size": 0}, "'data.batch_size': expected an integer >= 1"),
        ({"mode": "random"}, "'data.mode'"),
        ({"log1p_variables": ["pr"]}, "'data.log1p_variables': 'pr'"),
        ({"condition_files": ["c*.nc"]}, "'data.condition_variables' is required"),
        ({"patch_shape": [64, 64], "window": [32, 128]}, "'data.window'"),
        ({"train_time": ["2020-02-01", "2020-01-01"]}, "'data.train_time': start"),
        ({"valid_time": ["yesterday", "2020-01-01"]}, "'data.valid_time': 'yesterday'"),
        ({"dims": {"z": "lev"}}, "'data.dims.z' is unknown"),
        ({"variables": ["t2m", "t2m"]}, "'data.variables': 't2m' is listed twice"),
    ]
    for extra, message in cases:
        with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
            from_dict(DataConfig, {**base, **extra}, "data")
    with pytest.raises(ConfigError, match="'data.files' must be a non-empty list"):
        from_dict(DataConfig, {"variables": ["a"]}, "data")
