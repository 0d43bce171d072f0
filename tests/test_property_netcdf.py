"""Property-based robustness of the NetCDF reader: any file either reads or fails with
:class:`DataError` (naming the file), never a netCDF4 / HDF5 / cftime / numpy exception.

Files are written by the test with generated dimension names, orders and sizes, CF
attributes (valid, misspelled or of the wrong type), dtypes and packing, fill values, NaNs,
and cut or zeroed bytes. Fixed budget, derandomized (tests/conftest.py): the same examples
on every run.
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
    }


def write(path: Path, spec: dict) -> None:
    sizes = dict(spec["dims"])
    time_name = spec["dims"][0][0]
    rng = np.random.default_rng(0)
    with netCDF4.Dataset(path, "w") as ds:
        for name, size in spec["dims"]:
            unlimited = name == time_name and spec["unlimited"]
            ds.createDimension(name, None if unlimited else size)
        for name, attrs in spec["coords"].items():
            dtype = spec["time_dtype"] if name == time_name else "f8"
            var = ds.createVariable(name, dtype, (name,))
            for key, value in attrs.items():
                var.setncattr(key, value)
            n = sizes[name]
            if name == time_name:
                var.setncattr("units", spec["time_units"])
                if spec["calendar"] is not None:
                    var.setncattr("calendar", spec["calendar"])
                values = np.asarray(spec["time_values"][:n])
                if dtype is str:
                    var[:] = np.array([str(v) for v in values], dtype=object)
                else:
                    var[:] = np.nan_to_num(values) if dtype != "f8" else values
            else:
                var[:] = np.linspace(40.0, 41.0, n)
        shape = tuple(sizes[d] for d in spec["var_order"])
        dtype = np.dtype(spec["dtype"])
        fill = None
        if spec["fill"] and dtype.kind != "S":
            fill = netCDF4.default_fillvals[dtype.str[1:]]
        var = ds.createVariable(spec["var_name"], dtype, spec["var_order"], fill_value=fill)
        var.set_auto_maskandscale(False)
        for key, value in spec["attrs"].items():
            var.setncattr(key, value)
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
