"""GridSource: values equal direct netCDF4 reads; tile reads touch only the tile's chunks."""

from __future__ import annotations

import netCDF4
import numpy as np
import pytest
from ncfiles import CHUNKS, TIMES_PER_FILE, H, W

from hpcdiff.data.reader import HANDLES, GridSource
from hpcdiff.data.tiles import Tile


def direct(path, var, t, window: Tile) -> np.ndarray:
    """The reference: netCDF4's own masking and unpacking, missing -> NaN, as float32."""
    with netCDF4.Dataset(path) as ds:
        values = ds[var][t, window.row0 : window.row1, window.col0 : window.col1]
    return np.ma.filled(values.astype(np.float64), np.nan).astype(np.float32)


@pytest.mark.parametrize("var", ["a", "b", "c"])
def test_reads_equal_direct_netcdf4_reads(dataset, var):
    source = GridSource(dataset["fine"], ["a", "b", "c"])
    windows = [Tile.full((H, W)), Tile(3, 40, 17, 90), Tile(5, 9, 10, 20)]
    for t in range(source.n_times):
        f, local = divmod(t, TIMES_PER_FILE)
        for window in windows:
            got = source.read(var, t, window)
            assert got.dtype == np.float32 and got.shape == window.shape
            np.testing.assert_array_equal(got, direct(dataset["fine"][f], var, local, window))
    assert np.isnan(source.read("a", 0, Tile(5, 9, 10, 20))).all()
    assert np.isnan(source.read("a", 0)[30, 40:45]).all()  # _FillValue -> NaN


def test_files_sorted_by_time_and_units_converted(dataset):
    source = GridSource(list(reversed(dataset["fine"])), ["a"])
    assert [m.path for m in source.files] == [str(p) for p in dataset["fine"]]
    hours = (source.times - source.times[0]) / 3600
    np.testing.assert_array_equal(hours, np.arange(15))  # file 2 is in minutes since 10:00
    np.testing.assert_array_equal(
        source.time_indices("2021-01-01T03:00", "2021-01-01T11:00"), np.arange(3, 12)
    )
    assert source.shape == (H, W) and source.chunks("a") == CHUNKS


def test_static_source_reads_int_fields(dataset):
    static = GridSource(dataset["static"], ["orog", "lsm"], timed=False, name="static")
    with netCDF4.Dataset(dataset["static"][0]) as ds:
        np.testing.assert_array_equal(static.read_static("lsm"), ds["lsm"][:].astype(np.float32))
        np.testing.assert_array_equal(
            static.read_static("orog", Tile(1, 5, 2, 9)), ds["orog"][1:5, 2:9]
        )


def chunk_ids(key: tuple) -> set:
    """(t, chunk row, chunk col) of every HDF5 chunk a read with ``key`` decodes."""
    t, ys, xs = key
    return {
        (t, r, c)
        for r in range(ys.start // CHUNKS[1], -(-ys.stop // CHUNKS[1]))
        for c in range(xs.start // CHUNKS[2], -(-xs.stop // CHUNKS[2]))
    }


def test_tile_reads_request_only_the_tile(dataset):
    source = GridSource(dataset["fine"], ["a"])
    keys = []
    source.on_read = lambda path, var, key: keys.append(key)
    tile = Tile(16, 48, 32, 64).grow(4, source.shape)  # rows 12:52, cols 28:68
    for t in range(source.n_times):
        source.read("a", t, tile)
    assert all(k[1] == slice(12, 52) and k[2] == slice(28, 68) for k in keys)
    touched = set().union(*(chunk_ids(k) for k in keys))
    # 4 chunk rows (0:16, 16:32, 32:48, 48:64) x 3 chunk cols of 32 -> 12; per file-local time
    assert len(touched) == TIMES_PER_FILE * tile.n_chunks(CHUNKS) == TIMES_PER_FILE * 12


def rchar() -> int:
    """Bytes this process has read through read()/pread() so far (page cache included)."""
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("rchar")).split()[1])


def bytes_read(source: GridSource, window: Tile) -> int:
    HANDLES.close_all()
    for m in source.files:
        HANDLES.get(m.path)  # open (and read the header) before counting
    before = rchar()
    for t in range(source.n_times):
        source.read("a", t, window)
    return rchar() - before


def test_tile_reads_read_only_the_tile_bytes(dataset):
    """Bytes really read from disk: a 1/6 tile reads far less than the whole grid."""
    source = GridSource(dataset["fine"], ["a"])
    full = bytes_read(source, Tile.full(source.shape))
    tile = Tile(0, 32, 0, 32)  # 2 of 12 chunks per time step
    part = bytes_read(source, tile)
    raw = source.n_times * H * W * 4  # float32 noise: zlib cannot shrink it much
    assert full > 0.5 * raw  # the full read really goes to the file
    assert part < 0.3 * full, (part, full)
