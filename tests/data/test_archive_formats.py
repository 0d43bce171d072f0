"""Archives as they come: NetCDF3 (64-bit offset) files and WRF output, read without conversion.

Inspect, stats (equal to numpy on the raw bytes), WRF times, de-staggering, levels, static
fields at the first time, and the regridding of a coarse condition onto a curvilinear grid.
"""

from __future__ import annotations

import glob
import json
import shlex
import shutil
import subprocess
from pathlib import Path

import netCDF4
import numpy as np
import pytest
import yaml

from hpcdiff.cli import main
from hpcdiff.data.config import DataConfig
from hpcdiff.data.errors import DataError
from hpcdiff.data.inspect import inspect_paths
from hpcdiff.data.reader import HANDLES, GridSource
from hpcdiff.data.regrid import CurvilinearRegridder, Regridder, regridder_for
from hpcdiff.data.stats import compute_stats
from hpcdiff.data.stream import DataStream
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


def _stream_cfg(files: dict, variables: list[str], **kw) -> DataConfig:
    return DataConfig(files=files["fine"], variables=variables, mode="patch", batch_size=3,
                      patch_shape=(8, 12), prefetch=1, levels={"bottom_top": 0}, **kw)  # fmt: skip


@pytest.mark.parametrize("fmt", ["nc3", "wrf"])
def test_patch_mode_windows_are_the_patch_and_equal_direct_reads(fmt, nc3, wrf):
    files = nc3 if fmt == "nc3" else wrf
    names = ["t2m", "u10"] if fmt == "nc3" else ["T2", "U"]
    cond = dict(condition_files=files["coarse"], condition_variables=names[:1])
    with DataStream(_stream_cfg(files, names, **cond)) as stream:
        assert stream.window_shape == (8, 12)  # no chunks: nothing to round the patch up to
        origins = set()
        for _ in range(3):
            batch = next(stream)
            assert batch.condition.shape == (3, 1, 8, 12)
            for b in range(3):
                t, (r, c) = int(batch.time_index[b]), batch.origin[b].tolist()
                origins.add((r, c))
                for i, name in enumerate(names):
                    want = stream.sources["target"].read(name, t, Tile(r, r + 8, c, c + 12))
                    np.testing.assert_array_equal(batch.data[b, i].numpy(), want)
    assert len(origins) > 3 and any(r % 8 or c % 12 for r, c in origins)
    HANDLES.close_all()


def test_one_wrf_file_per_output_time(tmp_path):
    cfg = SynthConfig(out_dir=str(tmp_path), shape=(16, 16), n_times=3, n_files=3,
                      coarse_factor=2, variables=("t2m",), format="wrf")  # fmt: skip
    paths = write_dataset(cfg)
    assert [Path(p).name for p in paths["fine"]] == [
        f"wrfout_d02_2020-06-01_0{h}:00:00" for h in range(3)
    ]
    source = GridSource(paths["fine"][::-1], ["T2"])  # any order: sorted by Times
    assert source.n_times == 3 and np.all(np.diff(source.times) == 3600.0)
    assert [Path(f.path).name[-8:] for f in source.files] == ["00:00:00", "01:00:00", "02:00:00"]
    HANDLES.close_all()


def test_stats_cli_needs_and_takes_levels_for_3d_wrf_fields(wrf, tmp_path, capsys):
    out = tmp_path / "s.json"
    args = ["data", "stats", *wrf["fine"], "--variables", "U", "-o", str(out)]
    assert main(args) == 2
    assert "data.levels.bottom_top" in capsys.readouterr().err
    assert main([*args, "--levels", "bottom_top=1"]) == 0
    raw = _raw(wrf["fine"], "U", level=1)
    mean = json.loads(out.read_text())["groups"]["target"]["U"]["mean"]
    np.testing.assert_allclose(mean, (0.5 * (raw[..., :-1] + raw[..., 1:])).mean(), rtol=1e-6)
    assert main([*args, "--levels", "bottom_top"]) == 2
    HANDLES.close_all()


@pytest.mark.skipif(shutil.which("nccopy") is None, reason="nccopy: scripts/ci_services.sh install")
@pytest.mark.parametrize("fmt", ["nc3", "wrf"])
def test_the_advised_nccopy_command_converts_without_changing_values(fmt, nc3, wrf, tmp_path):
    files = nc3 if fmt == "nc3" else wrf
    names = ["t2m", "tp"] if fmt == "nc3" else ["T2", "U"]
    src = tmp_path / Path(files["fine"][0]).name
    shutil.copy(files["fine"][0], src)
    report, _ = inspect_paths([str(src)], patch=(16, 16))
    command = report.split("convert with: ")[1].split("\n")[0]
    subprocess.run(shlex.split(command), cwd=tmp_path, check=True, capture_output=True)
    with netCDF4.Dataset(tmp_path / "out.nc") as ds:
        assert ds.data_model == "NETCDF4"
        assert ds[names[0]].chunking() == [1, 16, 16]
    before = GridSource([str(src)], names, levels={"bottom_top": 0})
    after = GridSource([str(tmp_path / "out.nc")], names, levels={"bottom_top": 0})
    np.testing.assert_array_equal(after.times, before.times)
    for name in names:
        for t in range(before.n_times):
            np.testing.assert_array_equal(after.read(name, t), before.read(name, t))
    HANDLES.close_all()


def _samples_like(path: Path, lat: np.ndarray, lon: np.ndarray, coords: str) -> Path:
    with netCDF4.Dataset(path, "w") as ds:
        for name, size in (("member", 2), ("time", 1), ("y", lat.shape[0]), ("x", lat.shape[1])):
            ds.createDimension(name, size)
        for name, values, units in (("XLAT", lat, "degree_north"), ("XLONG", lon, "degree_east")):
            v = ds.createVariable(name, "f8", ("y", "x"))
            v.units, v[:] = units, values  # fmt: skip
        v = ds.createVariable("T2", "f4", ("member", "time", "y", "x"))
        v.coordinates = coords
        v[:] = np.ones((2, 1, *lat.shape))
    return path


def test_maps_of_curvilinear_grids_use_their_2d_coordinates(tmp_path, caplog):
    from hpcdiff.evaluate import plots

    lat, lon = np.meshgrid(np.linspace(50, 55, 6), np.linspace(5, 12, 8), indexing="ij")
    lon = lon + 0.1 * (lat - 50)  # sheared: not rectilinear
    path = _samples_like(tmp_path / "s.nc", lat, lon, "XLONG XLAT")
    with netCDF4.Dataset(path) as nc:
        got = plots.map_coords(nc, "T2", 2)
    np.testing.assert_array_equal(got[0], lat[::2, ::2])
    np.testing.assert_array_equal(got[1], lon[::2, ::2])
    field = np.arange(12.0).reshape(3, 4)
    png = plots.plot_maps(tmp_path / "m.png", "T2", "t0", [("truth", field)], got)
    assert png.stat().st_size > 1000
    with netCDF4.Dataset(_samples_like(tmp_path / "r.nc", lat, lon, "")) as nc:
        assert plots.map_coords(nc, "T2", 1) is None  # rectilinear or none: index space
    lat[2, 3] = np.nan
    with netCDF4.Dataset(_samples_like(tmp_path / "n.nc", lat, lon, "XLAT XLONG")) as nc:
        assert plots.map_coords(nc, "T2", 1) is None
    assert "2-D coordinates XLAT/XLONG have missing values" in caplog.text


def _grid_file(path: Path, y, x, ynames, xnames, lat2d=None, lon2d=None) -> Path:
    """A one-time file with 1-D coordinates ``y``/``x`` (named and described by ``ynames`` /
    ``xnames`` = (name, units, standard_name)) and optional 2-D lat/lon."""
    with netCDF4.Dataset(path, "w") as ds:
        ds.createDimension("time", None)
        t = ds.createVariable("time", "f8", ("time",))
        t.units, t[:] = "hours since 2020-06-01", [0.0]  # fmt: skip
        for values, (name, units, std) in ((y, ynames), (x, xnames)):
            ds.createDimension(name, values.size)
            v = ds.createVariable(name, "f8", (name,))
            v.units, v.standard_name, v[:] = units, std, values  # fmt: skip
        var = ds.createVariable("v", "f4", ("time", ynames[0], xnames[0]))
        var[:] = np.zeros((1, y.size, x.size))
        if lat2d is not None:
            var.coordinates = "lat lon"
            for name, values, units in (("lat", lat2d, "degrees_north"),
                                        ("lon", lon2d, "degrees_east")):  # fmt: skip
                c = ds.createVariable(name, "f8", (ynames[0], xnames[0]))
                c.units, c[:] = units, values  # fmt: skip
    return path


def test_rotated_pole_targets_use_their_2d_coordinates_not_their_rotated_axes(tmp_path):
    rlat, rlon = np.linspace(-2, 2, 9), np.linspace(-3, 3, 13)
    lat2d = 50 + rlat[:, None] + 0.05 * rlon[None, :]  # a rotated grid seen geographically
    lon2d = 10 + rlon[None, :] + 0.0 * rlat[:, None]
    rot = (("rlat", "degrees", "grid_latitude"), ("rlon", "degrees", "grid_longitude"))
    fine = _grid_file(tmp_path / "cosmo.nc", rlat, rlon, *rot, lat2d, lon2d)
    geo = (("lat", "degrees_north", "latitude"), ("lon", "degrees_east", "longitude"))
    era = _grid_file(tmp_path / "era.nc", np.linspace(45, 55, 11), np.linspace(5, 15, 11), *geo)
    target, coarse = GridSource([str(fine)], ["v"]), GridSource([str(era)], ["v"])
    assert (target.grid.axes, coarse.grid.axes) == ("projected", "geographic")
    regrid = regridder_for(target, coarse)
    assert isinstance(regrid, CurvilinearRegridder)
    lat_pos = regrid.i0 + regrid.wy  # fractional row of each fine point on the 1-degree grid
    np.testing.assert_allclose(lat_pos, lat2d - 45, atol=1e-6)
    bare = _grid_file(tmp_path / "bare.nc", rlat, rlon, *rot)  # rotated axes, no 2-D lat/lon
    with pytest.raises(DataError, match=r"\(rectilinear, geographic\) onto the target grid "
                                        r"\(rectilinear, projected\)") as err:  # fmt: skip
        regridder_for(GridSource([str(bare)], ["v"]), coarse)
    assert str(era) in str(err.value)
    HANDLES.close_all()


def test_a_rank_region_regrids_like_the_whole_grid(wrf, tmp_path):
    """The curvilinear regridder of one rank (its region only) gives the whole-grid result."""
    lat, lon = np.linspace(50, 62, 13), np.linspace(0, 20, 21)
    era = _grid_file(tmp_path / "era.nc", lat, lon, ("lat", "degrees_north", "latitude"),
                     ("lon", "degrees_east", "longitude"))  # fmt: skip
    with netCDF4.Dataset(era, "a") as ds:
        ds["v"][0] = np.random.default_rng(0).normal(size=(13, 21))
    fine, coarse = GridSource(wrf["fine"], ["T2"]), GridSource([str(era)], ["v"])
    whole = regridder_for(fine, coarse)
    region = Tile(10, 32, 20, 48)
    part = regridder_for(fine, coarse, region)
    window = Tile(12, 30, 21, 47)
    assert part.source_window(window) == whole.source_window(window)
    src = coarse.read("v", 0, whole.source_window(window))
    np.testing.assert_array_equal(part.apply(src, window), whole.apply(src, window))
    HANDLES.close_all()
