"""Malformed metadata, times and bytes: each gives a DataError naming file, variable (and index)
at the place it occurs, with the library's exception chained; odd but usable files still read."""

from __future__ import annotations

import zlib
from pathlib import Path

import netCDF4
import numpy as np
import pytest

from hpcdiff.data import cf, reader
from hpcdiff.data.errors import DataError
from hpcdiff.data.reader import HANDLES, GridSource, open_dataset

H, W = 3, 4
HOURS = np.array([0.0, 1.0, 2.0])


@pytest.fixture(autouse=True)
def _close_handles():
    yield
    HANDLES.close_all()


def write(
    path: Path,
    *,
    times=HOURS,
    time_dtype="f8",
    time_attrs=None,
    lat=None,
    lat_dtype="f8",
    dtype="f4",
    var_attrs=None,
    values=None,
    fill=None,
    compress=False,
) -> str:
    """A (time, lat, lon) file with variable ``v``; ``times=None`` makes ``v`` static."""
    time_attrs = {"units": "hours since 2020-01-01", "calendar": "standard", **(time_attrs or {})}
    kw = {"zlib": True, "complevel": 1, "shuffle": False} if compress else {}
    with netCDF4.Dataset(path, "w") as ds:
        dims = ("lat", "lon")
        if times is not None:
            ds.createDimension("time", len(times))
            tvar = ds.createVariable("time", time_dtype, ("time",), **kw)
            for key, value in time_attrs.items():
                tvar.setncattr(key, value)
            tvar[:] = times
            dims = ("time", *dims)
        ds.createDimension("lat", H)
        ds.createDimension("lon", W)
        yvar = ds.createVariable("lat", lat_dtype, ("lat",), **kw)
        yvar[:] = np.linspace(40.0, 41.0, H) if lat is None else lat
        ds.createVariable("lon", "f8", ("lon",))[:] = np.linspace(5.0, 6.0, W)
        var = ds.createVariable("v", dtype, dims, fill_value=fill)
        var.set_auto_maskandscale(False)
        for key, value in (var_attrs or {}).items():
            var.setncattr(key, value)
        shape = tuple(ds.dimensions[d].size for d in dims)
        var[...] = np.arange(np.prod(shape)).reshape(shape) if values is None else values
    return str(path)


def garble(path: str, values: np.ndarray) -> None:
    """Overwrite the deflated chunk holding ``values`` (written with complevel 1, no shuffle)."""
    blob = Path(path).read_bytes()
    chunk = zlib.compress(np.ascontiguousarray(values).tobytes(), 1)
    at = blob.find(chunk)
    assert at > 0, "compressed chunk not found in the file"
    with open(path, "r+b") as fh:
        fh.seek(at)
        fh.write(b"\xff" * len(chunk))


def raises(path: str, match: str, *, timed: bool = True, cause=None) -> DataError:
    with pytest.raises(DataError, match=match) as err:
        GridSource([path], ["v"], timed=timed)
    assert path in str(err.value)
    if cause is not None:
        assert isinstance(err.value.__cause__, cause)
    return err.value


# Time coordinate -------------------------------------------------------------------------------


@pytest.mark.parametrize("units", [3.0, "hours", "", [1.0, 2.0]])
def test_time_units_not_unit_since_date(tmp_path, units):
    path = write(tmp_path / "f.nc", time_attrs={"units": units})
    raises(path, r"variable 'time': time units .* are not CF 'UNIT since DATE'")


@pytest.mark.parametrize("calendar", ["bogus", "", 360, "none"])
def test_unknown_calendar(tmp_path, calendar):
    path = write(tmp_path / "f.nc", time_attrs={"calendar": calendar})
    raises(path, r"variable 'time': unknown calendar .*; CF calendars are standard")


def test_calendar_names_are_case_insensitive_and_gregorian_is_standard(tmp_path):
    path = write(tmp_path / "f.nc", time_attrs={"calendar": " Gregorian"})
    source = GridSource([path], ["v"])
    assert source.calendar == "standard" and source.n_times == 3


@pytest.mark.parametrize(
    "units, cause",
    [
        ("hours since notadate", ValueError),
        ("fortnights since 2000-01-01", ValueError),
        ("months since 2020-01-01", ValueError),
        ("hours since 2020-13-45", ValueError),
    ],
)
def test_unparsable_time_units(tmp_path, units, cause):
    path = write(tmp_path / "f.nc", time_attrs={"units": units})
    raises(path, r"variable 'time': cannot decode times with units", cause=cause)


def test_times_out_of_range(tmp_path):
    path = write(tmp_path / "f.nc", times=[0.0, 1.0, 1e300])
    raises(path, r"variable 'time': cannot decode times", cause=OverflowError)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_missing_time_names_its_index(tmp_path, bad):
    path = write(tmp_path / "f.nc", times=[0.0, bad, 2.0])
    err = raises(path, r"variable 'time', index 1: time is missing")
    assert err.index == 1


def test_time_equal_to_its_fill_value_is_missing(tmp_path):
    fill = netCDF4.default_fillvals["f8"]
    path = write(tmp_path / "f.nc", times=[0.0, 1.0, fill])
    raises(path, r"variable 'time', index 2: time is missing")


def test_time_coordinate_of_strings(tmp_path):
    path = tmp_path / "f.nc"
    write(path, times=None)
    with netCDF4.Dataset(path, "a") as ds:
        ds.createDimension("time", 2)
        tvar = ds.createVariable("time", str, ("time",))
        tvar.units = "hours since 2020-01-01"
        tvar[:] = np.array(["0", "1"], dtype=object)
        var = ds.createVariable("w", "f4", ("time", "lat", "lon"))
        var[:] = np.zeros((2, H, W))
    with pytest.raises(DataError, match=r"variable 'time': time coordinate has dtype object"):
        GridSource([str(path)], ["w"])


def test_time_coordinate_on_other_dimensions(tmp_path):
    path = tmp_path / "f.nc"
    with netCDF4.Dataset(path, "w") as ds:
        for name, size in (("time", 2), ("lat", H), ("lon", W)):
            ds.createDimension(name, size)
        tvar = ds.createVariable("time", "f8", ("time", "lat"))
        tvar.units = "hours since 2020-01-01"
        ds.createVariable("v", "f4", ("time", "lat", "lon"))[:] = np.zeros((2, H, W))
    with pytest.raises(DataError, match=r"'v': time dimension 'time' has no 1-D coordinate"):
        GridSource([str(path)], ["v"])
    with pytest.raises(DataError, match=r"variable 'time': time coordinate has dimensions"):
        with netCDF4.Dataset(path) as ds:
            cf.epoch_seconds(ds["time"], str(path))


def test_unreadable_time_bytes(tmp_path):
    path = write(tmp_path / "f.nc", times=[0.0, 1.0, 2.0, 3.0], compress=True)
    garble(path, np.array([0.0, 1.0, 2.0, 3.0]))
    err = raises(path, r"variable 'time': read failed \(RuntimeError", cause=RuntimeError)
    assert "truncated or corrupt" in str(err)


# Variable attributes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "attrs, match",
    [
        ({"scale_factor": ""}, r"attribute scale_factor = '' is not a single number"),
        ({"scale_factor": "0.1"}, r"attribute scale_factor = '0.1' is not a single number"),
        ({"add_offset": [1.0, 2.0]}, r"attribute add_offset = .* is not a single number"),
        ({"scale_factor": np.nan}, r"attribute scale_factor = nan is not a finite float32"),
        ({"add_offset": 1e39}, r"attribute add_offset = 1e\+39 is not a finite float32"),
        ({"missing_value": "n/a"}, r"attribute missing_value = 'n/a' is not numbers"),
    ],
)
def test_malformed_packing_and_missing_value(tmp_path, attrs, match):
    path = write(tmp_path / "f.nc", var_attrs=attrs)
    raises(path, rf"variable 'v': {match}")


def test_vector_missing_value_masks_every_entry(tmp_path):
    path = write(tmp_path / "f.nc", var_attrs={"missing_value": [1.0, 5.0]})
    field = GridSource([path], ["v"]).read("v", 0)
    assert np.isnan(field.flat[[1, 5]]).all() and np.isfinite(np.delete(field, [1, 5])).all()


def test_fill_values_the_dtype_cannot_hold_mask_nothing(tmp_path):
    attrs = {"missing_value": [904.0, -1.5, np.nan, 7.0]}  # only 7 fits uint8
    path = write(tmp_path / "f.nc", times=None, dtype="u1", var_attrs=attrs)
    source = GridSource([path], ["v"], timed=False)
    assert source.files[0].variables["v"].fills == (7,)
    field = source.read_static("v")
    assert np.isnan(field.flat[7]) and np.count_nonzero(np.isnan(field)) == 1


def test_float_fill_beyond_float32_is_dropped(tmp_path):
    path = write(tmp_path / "f.nc", var_attrs={"missing_value": [1e300, 2.0]})
    source = GridSource([path], ["v"])
    assert source.files[0].variables["v"].fills == (2.0,)
    assert np.count_nonzero(np.isnan(source.read("v", 0))) == 1


def test_int64_fill_value_matches_exactly(tmp_path):
    fill = int(netCDF4.default_fillvals["i8"])  # not exact as float64
    values = np.arange(H * W, dtype=np.int64).reshape(H, W)
    values[1, 2] = fill
    path = write(tmp_path / "f.nc", times=None, dtype="i8", fill=fill, values=values)
    field = GridSource([path], ["v"], timed=False).read_static("v")
    assert np.isnan(field[1, 2]) and np.count_nonzero(np.isnan(field)) == 1


# Grid coordinates and reads --------------------------------------------------------------------


def test_grid_coordinate_of_strings(tmp_path):
    path = write(tmp_path / "f.nc", lat=np.array(["a", "b", "c"], object), lat_dtype=str)
    raises(path, r"variable 'lat': coordinate of dimension 'lat' has dtype object")


@pytest.mark.parametrize(
    "lat", [np.ma.masked_array([40.0, 40.5, 41.0], mask=[0, 1, 0]), np.array([40.0, np.nan, 41.0])]
)
def test_missing_grid_coordinate_names_its_index(tmp_path, lat):
    path = write(tmp_path / "f.nc", lat=lat)
    raises(path, r"variable 'lat', index 1: grid coordinate is missing")


def test_unreadable_grid_coordinate(tmp_path):
    lat = np.array([40.0, 40.5, 41.0])
    path = write(tmp_path / "f.nc", lat=lat, compress=True)
    garble(path, lat)
    raises(path, r"variable 'lat': read failed \(RuntimeError", cause=RuntimeError)


def test_inspect_names_an_unreadable_coordinate(tmp_path):
    from hpcdiff.data.inspect import inspect_file

    lat = np.array([40.0, 40.5, 41.0])
    path = write(tmp_path / "f.nc", lat=lat, compress=True)
    garble(path, lat)
    with pytest.raises(DataError, match=r"variable 'lat': read failed") as err:
        inspect_file(path)
    assert path in str(err.value)


def test_variable_gone_after_validation(tmp_path):
    path = write(tmp_path / "f.nc")
    source = GridSource([path], ["v"])
    with netCDF4.Dataset(path, "a") as ds:
        ds.renameVariable("v", "w")
    with pytest.raises(DataError, match=r"f.nc, variable 'v': missing: the file changed"):
        source.read("v", 0)


def test_open_failure_chains_the_library_error(tmp_path):
    path = tmp_path / "junk.nc"
    path.write_bytes(b"not a netcdf file" * 10)
    with pytest.raises(DataError, match="junk.nc: cannot open") as err:
        open_dataset(str(path))
    assert isinstance(err.value.__cause__, OSError)


class _BrokenAttributes:
    """A variable whose attribute reads fail as netCDF4's do on a damaged header."""

    name = "v"

    def ncattrs(self):
        return ["units"]

    def getncattr(self, key):
        raise RuntimeError("NetCDF: HDF error")


def test_unreadable_attributes():
    with pytest.raises(DataError, match=r"x.nc, variable 'v': cannot read attributes") as err:
        cf.attributes(_BrokenAttributes(), "x.nc")
    assert isinstance(err.value.__cause__, RuntimeError)


class _BrokenChunking:
    def chunking(self):
        raise RuntimeError("NetCDF: HDF error")


class _DamagedDataset:
    """Opens, but its variables' storage layout cannot be queried."""

    closed = False
    variables = {"v": _BrokenChunking()}

    def set_auto_maskandscale(self, on):
        pass

    def close(self):
        self.closed = True


def test_unreadable_storage_layout_on_first_read(monkeypatch):
    damaged = _DamagedDataset()
    monkeypatch.setattr(reader, "open_dataset", lambda path: damaged)
    with pytest.raises(DataError, match=r"x.nc: cannot set up reads \(RuntimeError") as err:
        HANDLES.get("x.nc")
    assert isinstance(err.value.__cause__, RuntimeError) and damaged.closed
