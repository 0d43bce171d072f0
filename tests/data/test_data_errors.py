"""Bad input gives a DataError (or DataTypeError) naming the file, the variable and the index."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from ncfiles import H, W, fine_coords, fine_values, fine_vars, write_grid_file

from hpcdiff.data.config import DataConfig, resolve_files
from hpcdiff.data.errors import DataError, DataTypeError
from hpcdiff.data.reader import GridSource
from hpcdiff.data.stream import DataStream


def write_fine(path, hours, lat=None, lon=None, values=None, **kw):
    flat, flon = fine_coords()
    lat = flat if lat is None else lat
    lon = flon if lon is None else lon
    values = values or fine_values(0, len(hours))
    return write_grid_file(path, np.asarray(hours, float), fine_vars(values), lat, lon, **kw)


def test_missing_variable(dataset):
    with pytest.raises(DataError, match="variable 'zz'.*missing") as err:
        GridSource(dataset["fine"], ["a", "zz"])
    assert str(dataset["fine"][0]) in str(err.value)


def test_mismatched_grid_shape(dataset, tmp_path):
    lat, lon = fine_coords()
    other = {"a": (np.zeros((5, H, W - 16), np.float32), "f4", {})}
    bad = write_grid_file(tmp_path / "narrow.nc", np.arange(20.0, 25.0), other, lat, lon[:-16])
    with pytest.raises(DataError, match=r"narrow.nc, variable 'a'.*grid \(64, 80\) differs"):
        GridSource([*dataset["fine"], bad], ["a"])


def test_mismatched_grid_coordinates(dataset, tmp_path):
    lat, lon = fine_coords()
    bad = write_fine(tmp_path / "shifted.nc", range(20, 25), lon=lon + 0.5)
    with pytest.raises(DataError, match=r"shifted.nc, variable 'a', index x=0: x coordinate"):
        GridSource([*dataset["fine"], bad], ["a"])


@pytest.mark.parametrize(
    "hours, what, index",
    [([0, 1, 3, 2, 4], "time decreases", 3), ([0, 1, 1, 2, 3], "duplicate time", 2)],
)
def test_non_monotonic_and_duplicate_times(tmp_path, hours, what, index):
    bad = write_fine(tmp_path / "bad_times.nc", hours)
    with pytest.raises(DataError, match=rf"bad_times.nc, variable 'time', index {index}: {what}"):
        GridSource([bad], ["a"])


def test_overlapping_files(dataset, tmp_path):
    bad = write_fine(tmp_path / "overlap.nc", [14, 15, 16, 17, 18])  # 14 is in fine_2
    with pytest.raises(DataError, match="overlap.nc, variable 'time', index 0: .* duplicates"):
        GridSource([*dataset["fine"], bad], ["a"])


def test_truncated_file(dataset, tmp_path):
    bad = tmp_path / "truncated.nc"
    shutil.copy(dataset["fine"][0], bad)
    with open(bad, "r+b") as f:
        f.truncate(bad.stat().st_size // 2)
    with pytest.raises(DataError, match="truncated.nc: cannot open .*truncated, corrupt"):
        GridSource([bad], ["a"])


def corrupt_copy(src, dst):
    shutil.copy(src, dst)
    with open(dst, "r+b") as f:
        f.seek(dst.stat().st_size // 2)
        f.write(b"\xff" * 2000)  # garbles compressed chunks in the middle of the file
    return dst


def test_corrupt_chunk_names_file_variable_and_index(dataset, tmp_path):
    source = GridSource([corrupt_copy(dataset["fine"][0], tmp_path / "corrupt.nc")], ["a", "b"])
    with pytest.raises(DataError) as err:
        for var in ("a", "b"):
            for t in range(source.n_times):
                source.read(var, t)
    msg = str(err.value)
    assert "corrupt.nc, variable 'b', index [time=" in msg and "read failed" in msg
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_wrong_dtypes(tmp_path):
    lat, lon = fine_coords()
    ints = {"n": (np.ones((2, H, W), np.int32), "i4", {})}
    path = write_grid_file(tmp_path / "ints.nc", np.arange(2.0), ints, lat, lon)
    with pytest.raises(DataTypeError, match="ints.nc, variable 'n': has dtype int32"):
        GridSource([path], ["n"])
    with pytest.raises(TypeError):  # DataTypeError is also a TypeError
        GridSource([path], ["n"])
    import netCDF4

    with netCDF4.Dataset(tmp_path / "ints.nc", "a") as ds:
        ds.createVariable("s", str, ("time", "lat", "lon"))
    with pytest.raises(DataTypeError, match="variable 's': has dtype object"):
        GridSource([path], ["s"])


def test_glob_matching_nothing(tmp_path):
    with pytest.raises(DataError, match=r"data.files.*nothing\*.nc' matches no file"):
        resolve_files([str(tmp_path / "nothing*.nc")], "files")


def cfg_for(paths, **kw) -> DataConfig:
    return DataConfig(files=[str(p) for p in paths], variables=["a", "b"], **kw)


def test_all_nan_window_error_or_masked(tmp_path):
    values = fine_values(0, 5)
    values["a"][3, :32, :] = np.nan  # the top tile of time 3 has no valid 'a'
    path = write_fine(tmp_path / "holes.nc", range(5), values=values)
    from hpcdiff.data.tiles import Tile

    tile = Tile(0, 32, 0, W)
    cfg = cfg_for([path], batch_size=5, train_time=None)
    with DataStream(cfg, split="valid", tile=tile) as stream:
        with pytest.raises(DataError, match=r"holes.nc, variable 'a', index time 3 \(2021-01-01"):
            next(stream)
    cfg.all_nan = "mask"
    with DataStream(cfg, split="valid", tile=tile) as stream:
        batch = next(stream)
    assert batch.masked == 1 and stream.masked_windows == 1
    assert not batch.mask[3, 0].any() and batch.mask[3, 1].all()
    assert (batch.data[3, 0] == 0).all()


def test_condition_missing_times(dataset):
    cfg = DataConfig(
        files=[str(p) for p in dataset["fine"]],
        variables=["a"],
        condition_files=[str(p) for p in dataset["coarse"][:2]],  # times 10..14 missing
        condition_variables=["a"],
    )
    with pytest.raises(DataError, match=r"coarse_0.nc, variable 'a', index target time 10"):
        DataStream(cfg)
    cfg.train_time = ("2021-01-01T00:00", "2021-01-01T09:00")  # only needs times 0..9
    DataStream(cfg).close()


def test_static_grid_mismatch(dataset, tmp_path):
    lat, lon = fine_coords()
    small = {"orog": (np.zeros((H, W - 32), np.float32), "f4", {})}
    path = write_grid_file(tmp_path / "small_static.nc", None, small, lat, lon[:-32])
    cfg = cfg_for(dataset["fine"], static_files=[str(path)], static_variables=["orog"])
    with pytest.raises(DataError, match=r"small_static.nc, variable 'orog': static grid"):
        DataStream(cfg)


def test_background_read_error_is_raised_in_the_consumer(dataset, tmp_path):
    bad = corrupt_copy(dataset["fine"][0], tmp_path / "corrupt.nc")
    cfg = cfg_for([bad], batch_size=1, prefetch=1)
    stream = DataStream(cfg, split="valid")
    with pytest.raises(DataError, match=r"corrupt.nc, variable 'b', index \[time="):
        for _ in range(10):
            next(stream)
    stream.close()
    import threading

    assert not [t for t in threading.enumerate() if t.name == "hpcdiff-prefetch"]
