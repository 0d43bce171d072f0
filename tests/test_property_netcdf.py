"""Property-based robustness of the NetCDF reader: any file either reads or fails with
:class:`DataError` (naming the file), never a netCDF4 / HDF5 / cftime / numpy exception.

Files are written by the test with generated dimension names, orders and sizes, CF
attributes (valid, misspelled or of the wrong type), dtypes and packing, fill values, NaNs,
storage formats (NetCDF4, NetCDF3 classic and 64-bit offset), and cut or zeroed bytes; and as
WRF output (``Times`` strings, ``XTIME``, staggered dimensions, ``bottom_top`` levels), where a
read must equal numpy's de-staggering of the raw values. Fixed budget, derandomized
(tests/conftest.py): the same examples on every run.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import netCDF4
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcdiff.data.errors import DataError
from hpcdiff.data.inspect import inspect_file
from hpcdiff.data.reader import HANDLES, GridSource

COUNTER = itertools.count()

DIM_NAMES = st.sampled_from(
    [("time", "lat", "lon"), ("t", "y", "x"), ("valid_time", "south_north", "west_east"),
     ("a", "b", "c"), ("time", "rlat", "rlon"), ("time", "lat", "lat2")]
)  # fmt: skip
JUNK = st.one_of(
    st.text(max_size=12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**31), 2**31 - 1),
    st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=3),
)
TIME_UNITS = st.one_of(
    st.sampled_from(
        ["hours since 2020-01-01", "days since 1970-01-01 00:00:00", "hours", "",
         "seconds since 2020-06-01T00:00", "since", "hours since notadate",
         "months since 2020-01-01", "hours since 2020-13-45", "fortnights since 2000-01-01"]
    ),
    JUNK,
)  # fmt: skip
CALENDARS = st.one_of(
    st.sampled_from([None, "standard", "gregorian", "noleap", "360_day", "julian", "bogus", ""]),
    JUNK,
)
COORD_ATTRS = st.fixed_dictionaries(
    {},
    optional={
        "axis": st.one_of(st.sampled_from(["T", "Y", "X", "Z", "t", ""]), JUNK),
        "standard_name": st.one_of(
            st.sampled_from(["time", "latitude", "longitude", "grid_latitude", "height"]), JUNK
        ),
        "units": st.one_of(
            st.sampled_from(["degrees_north", "degrees_east", "m", "hours since 2020-01-01"]), JUNK
        ),
    },
)
PACKING = st.fixed_dictionaries(
    {},
    optional={
        "scale_factor": st.one_of(st.floats(-10, 10), JUNK),
        "add_offset": st.one_of(st.floats(-100, 100), JUNK),
        "missing_value": st.one_of(st.floats(-1e4, 1e4), JUNK),
    },
)


FORMATS = st.sampled_from(["NETCDF4", "NETCDF3_64BIT_OFFSET", "NETCDF3_CLASSIC"])
NC3_TYPES = {"u1": "i1", "i8": "i4"}  # NetCDF3 has neither


def _attr(value, nc3: bool):
    """Python ints become int64 attributes, which NetCDF3 cannot hold: write them as int32."""
    if nc3 and isinstance(value, int) and not isinstance(value, bool):
        return np.int32(value)
    return value


@st.composite
def file_specs(draw) -> dict:
    """A description of one small NetCDF file holding (maybe) variable ``v``."""
    names = draw(DIM_NAMES)
    sizes = [draw(st.integers(0, 3)), draw(st.integers(1, 5)), draw(st.integers(1, 5))]
    extra = draw(st.sampled_from([None, 1, 2]))
    dims = list(zip(names, sizes))
    if extra is not None:
        dims.append(("level", extra))
    order = draw(st.permutations([d for d, _ in dims]))
    if draw(st.booleans()):
        order = [d for d in order if d != names[0]]  # a static (time-less) variable
    return {
        "dims": dims,
        "unlimited": draw(st.booleans()),
        "coords": {name: draw(COORD_ATTRS) for name, _ in dims[:3] if draw(st.integers(0, 3)) > 0},
        "time_dtype": draw(st.sampled_from(["f8", "i4", "f4", str])),
        "time_values": draw(
            st.lists(st.floats(-1e6, 1e6) | st.just(float("nan")), min_size=3, max_size=3)
        ),
        "time_units": draw(TIME_UNITS),
        "calendar": draw(CALENDARS),
        "var_name": draw(st.sampled_from(["v", "v", "v", "w"])),
        "dtype": draw(st.sampled_from(["f4", "f8", "i2", "u1", "i8", "S1"])),
        "fill": draw(st.booleans()),
        "attrs": draw(PACKING),
        "nan_fraction": draw(st.sampled_from([0.0, 0.3, 1.0])),
        "var_order": order,
        "format": draw(FORMATS),
    }


def write(path: Path, spec: dict) -> None:
    sizes = dict(spec["dims"])
    time_name = spec["dims"][0][0]
    rng = np.random.default_rng(0)
    fmt = spec.get("format", "NETCDF4")
    nc3 = fmt.startswith("NETCDF3")
    with netCDF4.Dataset(path, "w", format=fmt) as ds:
        for name, size in spec["dims"]:
            unlimited = name == time_name and spec["unlimited"]
            if nc3 and spec["var_order"][:1] != [time_name]:
                # NetCDF3: the record dimension must come first, and a size of 0 means record
                unlimited, size = False, max(size, 1)
            ds.createDimension(name, None if unlimited else size)
        for name, attrs in spec["coords"].items():
            dtype = spec["time_dtype"] if name == time_name else "f8"
            dtype = "f8" if nc3 and dtype is str else dtype
            var = ds.createVariable(name, dtype, (name,))
            for key, value in attrs.items():
                var.setncattr(key, _attr(value, nc3))
            n = sizes[name]
            if name == time_name:
                var.setncattr("units", _attr(spec["time_units"], nc3))
                if spec["calendar"] is not None:
                    var.setncattr("calendar", _attr(spec["calendar"], nc3))
                values = np.asarray(spec["time_values"][:n])
                if dtype is str:
                    var[:] = np.array([str(v) for v in values], dtype=object)
                else:
                    var[:] = np.nan_to_num(values) if dtype != "f8" else values
            else:
                var[:] = np.linspace(40.0, 41.0, n)
        shape = tuple(sizes[d] for d in spec["var_order"])
        dtype = np.dtype(NC3_TYPES.get(spec["dtype"], spec["dtype"]) if nc3 else spec["dtype"])
        fill = None
        if spec["fill"] and dtype.kind != "S":
            fill = netCDF4.default_fillvals[dtype.str[1:]]
        var = ds.createVariable(spec["var_name"], dtype, spec["var_order"], fill_value=fill)
        var.set_auto_maskandscale(False)
        for key, value in spec["attrs"].items():
            var.setncattr(key, _attr(value, nc3))
        if dtype.kind == "f":
            data = rng.normal(size=shape).astype(dtype)
            data[rng.random(shape) < spec["nan_fraction"]] = np.nan
        elif dtype.kind == "S":
            data = np.full(shape, b"a", dtype="S1")
        else:
            data = rng.integers(0, 100, size=shape).astype(dtype)
        if data.size:
            var[...] = data


def read_everything(path: Path) -> None:
    """What training and ``hpcdiff data inspect`` do with a file: validate it, read every
    time step (or the static field), inspect its layout."""
    for timed in (True, False):
        try:
            source = GridSource([str(path)], ["v"], timed=timed)
            if timed:
                for t in range(source.n_times):
                    assert source.read("v", t).shape == source.shape
            else:
                assert source.read_static("v").shape == source.shape
        except DataError as err:
            assert str(path) in str(err)
    try:
        inspect_file(str(path))
    except DataError as err:
        assert str(path) in str(err)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("property_netcdf")


@given(spec=file_specs())
def test_any_generated_file_reads_or_raises_data_error(folder, spec):
    path = folder / f"f{next(COUNTER)}.nc"
    write(path, spec)
    try:
        read_everything(path)
    finally:
        HANDLES.close_all()


@st.composite
def wrf_specs(draw) -> dict:
    """A description of one small WRF-shaped file holding ``U``."""
    return {
        "format": draw(FORMATS),
        "times": draw(st.integers(0, 3)),
        "ny": draw(st.integers(1, 4)),
        "nx": draw(st.integers(1, 4)),
        "stagger": draw(st.sampled_from([None, "x", "y", "bottom_top"])),
        "levels": draw(st.sampled_from([None, 1, 3])),
        "level": draw(st.sampled_from([None, 0, 2, 5, -1])),
        "time_strings": draw(st.one_of(
            st.none(),
            st.just("valid"),
            st.lists(st.text(alphabet="0123456789-_: ax", max_size=19), min_size=3, max_size=3),
        )),
        "xtime_units": draw(st.one_of(st.none(), TIME_UNITS)),
        "nan_fraction": draw(st.sampled_from([0.0, 0.3])),
    }  # fmt: skip


def write_wrf(path: Path, spec: dict) -> tuple[np.ndarray, dict]:
    """The file of ``spec``; returns the raw values of U (time first) and the levels map."""
    nc3 = spec["format"].startswith("NETCDF3")
    n, ny, nx = spec["times"], spec["ny"], spec["nx"]
    stag = spec["stagger"]
    dims = ["Time"]
    levels = {}
    if spec["levels"] is not None:
        dims.append("bottom_top")
        if spec["level"] is not None:
            levels["bottom_top"] = spec["level"]
    dims += ["south_north_stag" if stag == "y" else "south_north"]
    dims += ["west_east_stag" if stag == "x" else "west_east"]
    sizes = {"Time": None, "DateStrLen": 19, "south_north": ny, "west_east": nx,
             "south_north_stag": ny + 1, "west_east_stag": nx + 1,
             "bottom_top": spec["levels"] or 1}  # fmt: skip
    rng = np.random.default_rng(1)
    with netCDF4.Dataset(path, "w", format=spec["format"]) as ds:
        for name, size in sizes.items():
            ds.createDimension(name, size)
        if spec["time_strings"] is not None:
            texts = spec["time_strings"]
            if texts == "valid":
                texts = [f"2020-06-01_{h:02d}:00:00" for h in range(3)]
            var = ds.createVariable("Times", "S1", ("Time", "DateStrLen"))
            if n:
                var[:] = netCDF4.stringtochar(np.array(texts[:n], "S19"))
        if spec["xtime_units"] is not None:
            var = ds.createVariable("XTIME", "f4", ("Time",))
            var.setncattr("units", _attr(spec["xtime_units"], nc3))
            if n:
                var[:] = np.arange(n) * 60.0
        var = ds.createVariable("U", "f4", dims)
        shape = [n] + [sizes[d] for d in dims[1:]]
        data = rng.normal(size=shape).astype(np.float32)
        data[rng.random(shape) < spec["nan_fraction"]] = np.nan
        if data.size:
            var[:] = data
    return data, levels


def _expected(data: np.ndarray, spec: dict, levels: dict) -> np.ndarray:
    if spec["levels"] is not None:
        data = data[:, levels.get("bottom_top", 0)]
    if spec["stagger"] == "x":
        return 0.5 * (data[..., :-1] + data[..., 1:])
    if spec["stagger"] == "y":
        return 0.5 * (data[..., :-1, :] + data[..., 1:, :])
    return data


@given(spec=wrf_specs())
def test_wrf_shaped_files_read_destaggered_or_raise_data_error(folder, spec):
    path = folder / f"wrfout_d01_{next(COUNTER)}"
    data, levels = write_wrf(path, spec)
    try:
        source = GridSource([str(path)], ["U"], levels=levels)
        want = _expected(data, spec, levels)
        for t in range(source.n_times):
            np.testing.assert_allclose(source.read("U", t), want[t], rtol=1e-6)
    except DataError as err:
        assert str(path) in str(err)
    try:
        inspect_file(str(path), patch=(2, 2))
    except DataError as err:
        assert str(path) in str(err)
    finally:
        HANDLES.close_all()


VALID = {
    "dims": [("time", 3), ("lat", 4), ("lon", 5)],
    "unlimited": True,
    "coords": {"time": {"axis": "T"}, "lat": {"axis": "Y"}, "lon": {"axis": "X"}},
    "time_dtype": "f8",
    "time_values": [0.0, 1.0, 2.0],
    "time_units": "hours since 2020-01-01",
    "calendar": "standard",
    "var_name": "v",
    "dtype": "f4",
    "fill": True,
    "attrs": {},
    "nan_fraction": 0.3,
    "var_order": ["time", "lat", "lon"],
}


@settings(max_examples=100)  # each example writes a file
@given(
    cut=st.one_of(st.none(), st.floats(0.0, 1.0, exclude_max=True)),
    zero_at=st.one_of(st.none(), st.floats(0.0, 1.0, exclude_max=True)),
    zero_len=st.integers(1, 4096),
    fill=st.sampled_from([b"\x00", b"\xff"]),
)
def test_truncated_or_overwritten_bytes_read_or_raise_data_error(
    folder, cut, zero_at, zero_len, fill
):
    path = folder / f"cut{next(COUNTER)}.nc"
    write(path, VALID)
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        if zero_at is not None:
            fh.seek(int(zero_at * size))
            fh.write(fill * zero_len)
        if cut is not None:
            fh.truncate(int(cut * size))
    try:
        read_everything(path)
    finally:
        HANDLES.close_all()


def test_the_valid_file_reads_with_its_nans_masked(folder):
    """The generator writes readable files: the baseline the properties perturb."""
    path = folder / "valid.nc"
    write(path, VALID)
    source = GridSource([str(path)], ["v"])
    assert source.n_times == 3 and source.shape == (4, 5)
    field = source.read("v", 1)
    assert field.dtype == np.float32 and np.isnan(field).any() and np.isfinite(field).any()
    HANDLES.close_all()
