"""DataStream: normalized tiles equal direct reads, rank-local reads, resume, patch mode."""

from __future__ import annotations

import gc
import multiprocessing
import threading
import time

import netCDF4
import numpy as np
import pytest
import torch
from ncfiles import TIMES_PER_FILE, W, coarse_coords, fine_coords

from hpcdiff.data.batch import Batch, cut_patches
from hpcdiff.data.config import DataConfig
from hpcdiff.data.stats import compute_stats, write_stats
from hpcdiff.data.stream import DataStream, open_sources
from hpcdiff.data.tiles import Tile


@pytest.fixture(scope="module")
def cfg_kwargs(dataset, tmp_path_factory):
    kw = dict(
        files=[str(p) for p in dataset["fine"]],
        variables=["a", "b", "c"],
        condition_files=[str(p) for p in dataset["coarse"]],
        condition_variables=["a", "b"],
        static_files=[str(p) for p in dataset["static"]],
        static_variables=["orog", "lsm"],
        log1p_variables=["b"],
        all_nan="mask",
    )
    stats_path = tmp_path_factory.mktemp("stats") / "stats.json"
    write_stats(compute_stats(open_sources(DataConfig(**kw)), ["b"]), stats_path)
    return {**kw, "stats_file": str(stats_path)}


def direct(path, var, t, window=None) -> np.ndarray:
    with netCDF4.Dataset(path) as ds:
        v = ds[var][t] if t is not None else ds[var][:]
    x = np.ma.filled(v.astype(np.float64), np.nan)
    return x if window is None else x[window.slices()]


def normalized(x, entry):
    if entry["transform"] == "log1p":
        x = np.log1p(np.maximum(x, 0))
    return (x - entry["mean"]) / entry["std"]


def bilinear(coarse: np.ndarray, window: Tile) -> np.ndarray:
    """Independent reference: np.interp along lat, then along lon (clamped at the ends)."""
    (clat, clon), (lat, lon) = coarse_coords(), fine_coords()
    rows = np.stack([np.interp(lat, clat, coarse[:, j]) for j in range(clon.size)], axis=1)
    full = np.stack([np.interp(lon, clon, rows[i]) for i in range(lat.size)], axis=0)
    return full[window.slices()]


def test_tile_batch_equals_normalized_direct_reads(dataset, cfg_kwargs):
    import json

    stats = json.loads(open(cfg_kwargs["stats_file"]).read())["groups"]
    tile = Tile(16, 48, 32, 64)
    cfg = DataConfig(**cfg_kwargs, tile_margin=8, batch_size=3)
    with DataStream(cfg, split="valid", tile=tile) as stream:
        batch = next(stream)
    window = Tile(8, 56, 24, 72)
    assert batch.data.shape == (3, 3, 48, 48) and batch.data.dtype == torch.float32
    assert batch.origin.tolist() == [[8, 24]] * 3 and batch.time_index.tolist() == [0, 1, 2]
    for b, t in enumerate(batch.time_index.tolist()):
        f, local = divmod(t, TIMES_PER_FILE)
        for c, var in enumerate(["a", "b", "c"]):
            raw = direct(dataset["fine"][f], var, local, window)
            want = normalized(raw, stats["target"][var])
            np.testing.assert_array_equal(batch.mask[b, c].numpy(), np.isfinite(raw))
            np.testing.assert_allclose(batch.data[b, c].numpy(), np.nan_to_num(want), atol=2e-5)
        for c, var in enumerate(["a", "b"]):
            coarse = normalized(direct(dataset["coarse"][f], var, local), stats["condition"][var])
            np.testing.assert_allclose(
                batch.condition[b, c].numpy(), bilinear(coarse, window), atol=2e-5
            )
    for c, var in enumerate(["orog", "lsm"]):
        want = normalized(direct(dataset["static"][0], var, None, window), stats["static"][var])
        np.testing.assert_allclose(batch.static[2, c].numpy(), want, atol=2e-5)


def test_stream_reads_only_its_tile_plus_margin(cfg_kwargs):
    tile = Tile(32, 64, 48, 96)
    cfg = DataConfig(**cfg_kwargs, tile_margin=4, batch_size=2)
    stream = DataStream(cfg, tile=tile)
    keys = {"target": [], "condition": []}
    for group in keys:
        stream.sources[group].on_read = lambda path, var, key, g=group: keys[g].append(key)
    for _ in range(3):
        next(stream)
    stream.close()
    n = len(keys["target"])  # 3 variables x 2 samples per batch, some batches prefetched
    assert n >= 3 * 2 * 3 and n % 6 == 0

    def spans(ks):
        return {(k[1].start, k[1].stop, k[2].start, k[2].stop) for k in ks}

    assert spans(keys["target"]) == {(28, 64, 44, 96)}
    # coarse rows/cols that bilinear weights of rows 28:64 / cols 44:96 need (factor 4)
    assert spans(keys["condition"]) == {(6, 16, 10, 24)}


def batches(cfg, n, **kw):
    with DataStream(cfg, **kw) as stream:
        return [next(stream) for _ in range(n)]


def test_resume_is_exact(cfg_kwargs):
    cfg = DataConfig(**cfg_kwargs, batch_size=2, seed=3, mode="patch", patch_shape=(16, 16))
    run = batches(cfg, 9)  # 15 times, 7 batches per epoch: crosses an epoch
    for k in (1, 6):
        resumed = batches(cfg, 9 - k - 1, state=run[k].state)
        for a, b in zip(run[k + 1 :], resumed):
            assert torch.equal(a.time_index, b.time_index) and torch.equal(a.origin, b.origin)
            assert torch.equal(a.data, b.data) and torch.equal(a.condition, b.condition)
    with DataStream(cfg) as stream:
        stream.load_state_dict(run[4].state)
        assert torch.equal(next(stream).data, run[5].data)
        assert stream.state_dict() == run[5].state


@pytest.mark.parametrize("world", [2, 4])
def test_data_parallel_ranks_cover_each_time_once(cfg_kwargs, world):
    times = ("2021-01-01", "2021-01-01T11:00")
    cfg = DataConfig(**cfg_kwargs, batch_size=12 // world // 3, train_time=times)
    seen = []
    for rank in range(world):
        for batch in batches(cfg, 3, dp_rank=rank, dp_size=world):
            seen += batch.time_index.tolist()
    assert sorted(seen) == list(range(12))


def test_domain_group_ranks_read_same_times_different_tiles(cfg_kwargs):
    cfg = DataConfig(**cfg_kwargs, batch_size=2)
    left = batches(cfg, 2, tile=Tile(0, 64, 0, 48))
    right = batches(cfg, 2, tile=Tile(0, 64, 48, 96))
    for a, b in zip(left, right):
        assert torch.equal(a.time_index, b.time_index)
        assert a.origin[0].tolist() == [0, 0] and b.origin[0].tolist() == [0, 48]


def test_patch_mode_reads_chunk_aligned_windows_inside_the_tile(dataset, cfg_kwargs):
    tile = Tile(0, 64, 32, 96)
    cfg = DataConfig(**cfg_kwargs, mode="patch", patch_shape=(20, 40), batch_size=4)
    out = batches(cfg, 3, tile=tile)
    for batch in out:
        assert batch.data.shape[-2:] == (32, 64)  # patch covered by whole (16, 32) chunks
        rows, cols = batch.origin[:, 0], batch.origin[:, 1]
        assert (rows % 16 == 0).all() and (cols % 32 == 0).all()
        assert (cols >= 32).all() and (cols + 64 <= 96).all() and (rows + 32 <= 64).all()
    b = out[0]
    t, (r, c) = int(b.time_index[0]), b.origin[0].tolist()
    f, local = divmod(t, TIMES_PER_FILE)
    raw = direct(dataset["fine"][f], "a", local, Tile(r, r + 32, c, c + 64))
    np.testing.assert_array_equal(b.mask[0, 0].numpy(), np.isfinite(raw))


def test_worker_processes_give_the_same_batches(cfg_kwargs):
    cfg = DataConfig(**cfg_kwargs, mode="patch", patch_shape=(16, 32), batch_size=3, seed=1)
    threaded = batches(cfg, 4)
    cfg.workers = 2
    spawned = batches(cfg, 4)
    for a, b in zip(threaded, spawned):
        assert torch.equal(a.data, b.data) and torch.equal(a.mask, b.mask)
        assert torch.equal(a.condition, b.condition) and torch.equal(a.static, b.static)
        assert a.state == b.state
    assert multiprocessing.active_children() == []


def test_close_stops_the_background_thread(cfg_kwargs):
    stream = DataStream(DataConfig(**cfg_kwargs, batch_size=1, prefetch=1))
    next(stream)
    stream.close()
    stream.close()
    assert not [t for t in threading.enumerate() if t.name == "hpcdiff-prefetch"]
    forgotten = DataStream(DataConfig(**cfg_kwargs, batch_size=1, prefetch=1))
    next(forgotten)
    del forgotten  # never closed: collecting it stops its reader thread
    gc.collect()
    time.sleep(0.5)
    assert not [t for t in threading.enumerate() if t.name == "hpcdiff-prefetch"]
    valid = DataStream(DataConfig(**cfg_kwargs, batch_size=4), split="valid")
    sizes = [b.data.shape[0] for b in valid]  # one pass in time order, last batch partial
    assert sizes == [4, 4, 4, 3]


def test_cut_patches_global_positions(cfg_kwargs):
    cfg = DataConfig(**cfg_kwargs, batch_size=2, patch_shape=(8, 12), patches_per_sample=5)
    with DataStream(cfg, tile=Tile(16, 48, 32, W)) as stream:
        batch = next(stream)
        patches = stream.cut_patches(batch, torch.Generator().manual_seed(0))
    assert patches.data.shape == (10, 3, 8, 12) and patches.condition.shape == (10, 2, 8, 12)
    gi = patches.global_index()
    for i in range(10):
        p, b = divmod(i, 2)  # patch-major
        r, c = (patches.origin[i] - batch.origin[b]).tolist()
        assert torch.equal(patches.data[i], batch.data[b, :, r : r + 8, c : c + 12])
        assert torch.equal(patches.static[i], batch.static[b, :, r : r + 8, c : c + 12])
        assert gi[i, 0, 0, 0] == patches.origin[i, 0] and gi[i, 1, 3, 5] == patches.origin[i, 1] + 5
    same = cut_patches(batch, (8, 12), 5, torch.Generator().manual_seed(0))
    assert torch.equal(same.origin, patches.origin)


def test_cut_patches_at_given_corners_and_corners_outside_the_window():
    data = torch.arange(2 * 1 * 6 * 8, dtype=torch.float32).reshape(2, 1, 6, 8)
    origin = torch.tensor([[0, 0], [10, 20]])
    batch = Batch(data=data, mask=data > 40, origin=origin, time_index=torch.tensor([0, 1]))
    corners = torch.tensor([[0, 0], [2, 5]])  # (2, 5) = (6 - 4, 8 - 3): the last valid corner
    p = cut_patches(batch, (4, 3), 2, corners=corners)
    assert p.data.shape == (4, 1, 4, 3) and p.data.is_contiguous()
    assert torch.equal(p.data[3], data[1, :, 2:6, 5:8])  # patch 1 of sample 1 (patch-major)
    assert torch.equal(p.mask[1], batch.mask[1, :, 0:4, 0:3])
    assert p.origin.tolist() == [[0, 0], [10, 20], [2, 5], [12, 25]]
    grad = Batch(data=data.clone().requires_grad_(), mask=batch.mask, origin=origin,
                 time_index=batch.time_index)  # fmt: skip
    q = cut_patches(grad, (4, 3), 2, corners=corners)  # the torch (autograd) path
    assert torch.equal(q.data, p.data) and q.data.requires_grad
    for bad in ([[3, 0]], [[0, 6]], [[-1, 0]]):
        with pytest.raises(ValueError, match="outside the 6x8 window"):
            cut_patches(batch, (4, 3), 1, corners=torch.tensor(bad))
    with pytest.raises(ValueError, match=r"shape \(P, 2\)"):
        cut_patches(batch, (4, 3), 1, corners=torch.tensor([1, 2]))
