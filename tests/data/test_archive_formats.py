"""Archives as they come: NetCDF3 (64-bit offset) files and WRF output, read without conversion.

Inspect, stats (equal to numpy on the raw bytes), WRF times, de-staggering, levels, static
fields at the first time, and the regridding of a coarse condition onto a curvilinear grid.
"""

from __future__ import annotations

import glob
from pathlib import Path

import netCDF4
import numpy as np
import pytest
import yaml

from hpcdiff.cli import main
from hpcdiff.data.errors import DataError
from hpcdiff.data.inspect import inspect_paths
from hpcdiff.data.reader import HANDLES, GridSource
from hpcdiff.data.regrid import CurvilinearRegridder, Regridder, regridder_for
from hpcdiff.data.stats import compute_stats
from hpcdiff.data.synth import SynthConfig, write_dataset
from hpcdiff.data.tiles import Tile

SHAPE = (32, 48)


def _synth(root: Path, fmt: str) -> dict:
    cfg = SynthConfig(out_dir=str(root), shape=SHAPE, n_times=6, n_files=2, coarse_factor=4,
                      chunk=16, variables=("t2m", "u10", "tp"), format=fmt)  # fmt: skip
    return write_dataset(cfg)


@pytest.fixture(scope="module")
def nc3(tmp_path_factory) -> dict:
    return _synth(tmp_path_factory.mktemp("nc3"), "netcdf3")


@pytest.fixture(scope="module")
def wrf(tmp_path_factory) -> dict:
    return _synth(tmp_path_factory.mktemp("wrf"), "wrf")


def _raw(paths, name, level=None) -> np.ndarray:
    """All times of ``name`` straight from netCDF4 (float64), concatenated over files."""
    out = []
    for p in paths:
        with netCDF4.Dataset(p) as ds:
            v = np.asarray(ds[name][:], dtype=np.float64)
            out.append(v[:, level] if level is not None else v)
    return np.concatenate(out)


def _numpy_stats(x: np.ndarray) -> tuple[float, float, float, float]:
    return x.mean(), x.std(), x.min(), x.max()


def test_netcdf3_inspect_says_the_cost_and_how_to_convert(nc3, capsys):
    path = nc3["fine"][0]
    with netCDF4.Dataset(path) as ds:
        assert ds.data_model == "NETCDF3_64BIT_OFFSET"
    report, n = inspect_paths([path], patch=(8, 8))
    assert "t2m (time, lat, lon) float32 [K] air_temperature: contiguous (NetCDF3)" in report
    assert n == 1, report
    assert "3 field(s) (t2m, u10, tp) stored contiguously (NETCDF3_64BIT_OFFSET)" in report
    assert "a 8 x 8 patch reads 8 rows of 32 B spread over 1.5 KiB" in report
    assert "nccopy -k nc4 -c time/1,lat/8,lon/8 -d 1 -s fine_000.nc out.nc" in report
    # patches spanning at least half the grid width: nothing to convert
    assert inspect_paths([path], patch=(32, 32))[1] == 0
    assert main(["data", "inspect", path]) == 0
    assert "1 file(s), 0 warning(s)" in capsys.readouterr().out


def test_wrf_inspect_lists_times_coordinates_and_projection(wrf):
    report, _ = inspect_paths([wrf["fine"][0]])
    assert "time axis of 'Time': Times 2020-06-01T00:00:00 .. 2020-06-01T02:00:00 (3 steps)" in (
        report
    )
    assert "2-D coordinate XLAT (Time, south_north, west_east)" in report
    assert "MAP_PROJ=1" in report and "TRUELAT1=54.0" in report
    assert "no CF axis" not in report  # WRF dimension names are known


@pytest.mark.parametrize("fmt", ["nc3", "wrf"])
def test_stats_equal_numpy_on_the_raw_values(fmt, nc3, wrf):
    files = nc3 if fmt == "nc3" else wrf
    names = ("t2m", "u10") if fmt == "nc3" else ("T2", "U")
    target = GridSource(files["fine"], list(names), levels={"bottom_top": 0})
    stats = compute_stats({"target": target}, num_workers=2)["groups"]["target"]
    for name in names:
        raw = _raw(files["fine"], name, 0 if name == "U" else None)
        if name == "U":  # de-staggered onto mass points
            raw = 0.5 * (raw[..., :-1] + raw[..., 1:])
        mean, std, lo, hi = _numpy_stats(raw)
        got = stats[name]
        np.testing.assert_allclose([got["mean"], got["std"]], [mean, std], rtol=1e-5)
        np.testing.assert_allclose([got["min"], got["max"]], [lo, hi], rtol=1e-6)
        assert got["count"] == raw.size and got["missing"] == 0
    HANDLES.close_all()


def test_wrf_times_staggering_levels_and_static(wrf):
    source = GridSource(wrf["fine"], ["T2", "U"], levels={"bottom_top": 1})
    assert source.shape == SHAPE and source.n_times == 6
    xtime = _raw(wrf["fine"], "XTIME")  # minutes since the start: the same axis as Times
    start = netCDF4.num2date(0, "seconds since 1970-01-01", "standard")
    first = (np.datetime64("2020-06-01T00:00") - np.datetime64(start.isoformat())) / np.timedelta64(
        1, "s"
    )
    np.testing.assert_allclose(source.times, first + 60 * xtime)
    raw = _raw(wrf["fine"], "U", level=1)  # (T, H, W + 1)
    u = source.read("U", 4, Tile(3, 20, 5, 40))
    want = 0.5 * (raw[4, 3:20, 5:40] + raw[4, 3:20, 6:41])
    np.testing.assert_allclose(u, want, rtol=1e-6)
    assert u.shape == (17, 35)
    static = GridSource(wrf["static"], ["HGT"], timed=False)  # Time of 3 read at its first
    np.testing.assert_array_equal(static.read_static("HGT"), _raw(wrf["static"], "HGT")[0])
    with pytest.raises(DataError, match=r"data.levels.bottom_top.*\{bottom_top: 0\}") as err:
        GridSource(wrf["fine"], ["U"])
    assert "wrfout_d02_2020-06-01_00:00:00" in str(err.value)
    with pytest.raises(DataError, match=r"'data.levels.bottom_top' = 2 is not an index in \[0, 2"):
        GridSource(wrf["fine"], ["U"], levels={"bottom_top": 2})
    assert source.grid.curvilinear and source.grid.projection["MAP_PROJ"] == 1
    HANDLES.close_all()


def _wrf_like(path: Path, times: list[str] | None, xtime_units: str | None) -> Path:
    with netCDF4.Dataset(path, "w", format="NETCDF3_64BIT_OFFSET") as ds:
        for name, size in (("Time", None), ("DateStrLen", 19), ("south_north", 3),
                           ("west_east", 4)):  # fmt: skip
            ds.createDimension(name, size)
        ds.createVariable("T2", "f4", ("Time", "south_north", "west_east"))[:] = np.ones((2, 3, 4))
        if times is not None:
            ds.createVariable("Times", "S1", ("Time", "DateStrLen"))[:] = netCDF4.stringtochar(
                np.array(times, "S19")
            )
        if xtime_units is not None:
            x = ds.createVariable("XTIME", "f4", ("Time",))
            x.units = xtime_units
            x[:] = [0.0, 90.0]
    return path


def test_xtime_when_there_is_no_times_and_bad_times_are_named(tmp_path):
    path = _wrf_like(tmp_path / "wrfout_x", None, "minutes since 2021-03-04 06:00:00")
    source = GridSource([str(path)], ["T2"])
    assert np.diff(source.times).tolist() == [5400.0]
    assert source.time_indices("2021-03-04T07:30", "2021-03-04T07:30").tolist() == [1]
    bad = _wrf_like(tmp_path / "wrfout_bad", ["2021-03-04_06:00:00", "2021-03-04 junk"], None)
    with pytest.raises(DataError, match=r"time '2021-03-04 junk' is not YYYY-MM-DD_HH:MM:SS"):
        GridSource([str(bad)], ["T2"])
    none = _wrf_like(tmp_path / "wrfout_none", None, None)
    with pytest.raises(DataError, match="has no 1-D coordinate variable .nor WRF Times / XTIME"):
        GridSource([str(none)], ["T2"])
    HANDLES.close_all()


def test_a_wrf_parent_conditions_its_nest_in_index_space(wrf):
    fine = GridSource(wrf["fine"], ["T2"])
    coarse = GridSource(wrf["coarse"], ["T2"])
    regrid = regridder_for(fine, coarse)
    assert isinstance(regrid, Regridder)
    ny, nx = coarse.shape
    field = (2.0 * np.arange(ny)[:, None] + 3.0 * np.arange(nx)[None, :]).astype(np.float32)
    window = Tile(4, 28, 4, 44)  # inside: bilinear is exact for a linear field there
    src = regrid.source_window(window)
    out = regrid.apply(field[src.row0 : src.row1, src.col0 : src.col1], window)
    rows = (np.arange(4, 28) + 0.5) / 4 - 0.5
    cols = (np.arange(4, 44) + 0.5) / 4 - 0.5
    np.testing.assert_allclose(out, 2 * rows[:, None] + 3 * cols[None, :], rtol=1e-6)
    HANDLES.close_all()


def test_regular_latlon_conditions_a_curvilinear_grid_and_the_rest_is_refused(wrf, tmp_path):
    fine = GridSource(wrf["fine"], ["T2"])
    lat, lon = np.linspace(50, 62, 25), np.linspace(0, 20, 41)
    era = tmp_path / "era.nc"  # a reanalysis on a regular grid, 0-360 longitudes
    with netCDF4.Dataset(era, "w") as ds:
        for name, values, units in (
            ("latitude", lat[::-1], "degrees_north"),
            ("longitude", lon + 360.0 * (lon < 0), "degrees_east"),
        ):
            ds.createDimension(name, values.size)
            v = ds.createVariable(name, "f8", (name,))
            v.units, v[:] = units, values  # fmt: skip
        ds.createDimension("time", None)
        t = ds.createVariable("time", "f8", ("time",))
        t.units, t[:] = "hours since 2020-06-01", [0.0]  # fmt: skip
        field = 0.5 * lat[::-1, None] - 0.25 * lon[None, :]  # linear in lat and lon
        ds.createVariable("t2m", "f4", ("time", "latitude", "longitude"))[:] = field[None]
    coarse = GridSource([str(era)], ["t2m"])
    region = Tile(0, 20, 10, 48)
    regrid = regridder_for(fine, coarse, region)
    assert isinstance(regrid, CurvilinearRegridder)
    window = Tile(2, 18, 12, 40)
    src = regrid.source_window(window)
    out = regrid.apply(coarse.read("t2m", 0, src), window)
    with netCDF4.Dataset(wrf["fine"][0]) as ds:
        xlat, xlon = (np.asarray(ds[n][0, 2:18, 12:40], np.float64) for n in ("XLAT", "XLONG"))
    np.testing.assert_allclose(out, 0.5 * xlat - 0.25 * xlon, atol=2e-4)
    with pytest.raises(ValueError, match="outside the regridded region"):
        regrid.source_window(Tile(0, 4, 0, 4))
    # a WRF domain conditioning a regular grid: refused in one line naming the file
    with pytest.raises(DataError, match=r"cannot regrid this condition grid \(WRF domain 2\)"):
        regridder_for(coarse, fine)
    HANDLES.close_all()


def test_synth_refuses_sst_in_wrf_format():
    with pytest.raises(ValueError, match="sst has no WRF output counterpart"):
        SynthConfig(variables=("t2m", "sst"), format="wrf")
    with pytest.raises(ValueError, match="format must be one of netcdf4, netcdf3, wrf"):
        SynthConfig(format="grib")


def test_wrf_file_names_and_yaml(wrf):
    folder = Path(wrf["fine"][0]).parent
    names = sorted(Path(p).name for p in glob.glob(str(folder / "wrfout_*")))
    stamps = ["2020-06-01_00:00:00", "2020-06-01_03:00:00"]
    assert names == [f"wrfout_d0{d}_{s}" for d in (1, 2) for s in stamps]
    data = yaml.safe_load((folder / "data.yaml").read_text())["data"]
    assert data["variables"] == ["T2", "U", "PREC_ACC_NC"] and data["levels"] == {"bottom_top": 0}
