"""Statistics out of core with dask equal numpy's; JSON round trip; the lazy dask view."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ncfiles import CHUNKS

from hpcdiff.cli import main
from hpcdiff.data.errors import DataError
from hpcdiff.data.lazy import MIN_CHUNK_BYTES, dask_chunks, to_dask
from hpcdiff.data.normalize import Normalizer, read_stats
from hpcdiff.data.reader import GridSource
from hpcdiff.data.stats import compute_stats, write_stats


def all_values(source: GridSource, var: str, log1p: bool = False) -> np.ndarray:
    x = np.stack([source.read(var, t) for t in range(source.n_times)])  # float32, as streamed
    return (np.log1p(np.maximum(x, 0)) if log1p else x).astype(np.float64)


def test_lazy_view_is_chunk_aligned_and_equals_reads(dataset):
    source = GridSource(dataset["fine"], ["a", "c"])
    x = to_dask(source, "c", target_bytes=2**14)
    assert x.shape == (15, 64, 96) and x.dtype == np.float32
    assert all(c % CHUNKS[1] == 0 or c == 64 for c in x.chunks[1])
    np.testing.assert_array_equal(
        x[3:12, 10:50, 5:90].compute(), all_values(source, "c")[3:12, 10:50, 5:90]
    )
    big = dask_chunks((8760, 8192, 8192), (1, 256, 256), 4, MIN_CHUNK_BYTES)
    assert big == (1, 512, 8192)  # whole chunk rows, 16 MiB
    assert dask_chunks((10, 64, 96), None, 4, MIN_CHUNK_BYTES) == (10, 64, 96)


def test_stats_equal_numpy(dataset):
    sources = {
        "target": GridSource(dataset["fine"], ["a", "b", "c"]),
        "static": GridSource(dataset["static"], ["orog"], timed=False, name="static"),
    }
    stats = compute_stats(sources, log1p=["b"], target_bytes=2**15, num_workers=2)
    for var in ("a", "b", "c"):
        x = all_values(sources["target"], var, log1p=var == "b")
        got = stats["groups"]["target"][var]
        finite = x[np.isfinite(x)]
        assert got["count"] == finite.size and got["missing"] == x.size - finite.size
        np.testing.assert_allclose(got["mean"], finite.mean(), rtol=1e-12)
        np.testing.assert_allclose(got["std"], finite.std(), rtol=1e-9)
        assert got["min"] == finite.min() and got["max"] == finite.max()
        assert got["transform"] == ("log1p" if var == "b" else "none")
    assert stats["groups"]["target"]["a"]["missing"] == 15 * 4 * 10 + 3 * 5  # NaN + fills
    orog = sources["static"].read_static("orog")
    np.testing.assert_allclose(stats["groups"]["static"]["orog"]["mean"], orog.astype(float).mean())


def test_stats_json_and_normalizer(dataset, tmp_path):
    sources = {"target": GridSource(dataset["fine"], ["a", "b"])}
    path = tmp_path / "stats.json"
    write_stats(compute_stats(sources, log1p=["b"]), path)
    stats = read_stats(path)
    norm = Normalizer.from_file(str(path), "target", ["a", "b"], log1p=["b"])
    x = np.stack([sources["target"].read(v, 4) for v in ("a", "b")])[None]  # (1, 2, H, W)
    y = norm(x.copy())
    for c, v in enumerate(("a", "b")):
        s = stats["groups"]["target"][v]
        raw = x[0, c] if v == "a" else np.log1p(x[0, c])
        np.testing.assert_allclose(y[0, c], (raw - s["mean"]) / s["std"], rtol=1e-5, atol=1e-5)
    with pytest.raises(DataError, match="variable 'b'.*transform 'log1p'.*'none'"):
        Normalizer.from_file(str(path), "target", ["a", "b"], log1p=[])
    with pytest.raises(DataError, match="variable 'zz': no target statistics"):
        Normalizer.from_file(str(path), "target", ["zz"])
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(DataError, match="bad.json: not a hpcdiff-stats/1"):
        read_stats(tmp_path / "bad.json")


def test_stats_cli(dataset, tmp_path, capsys):
    out = tmp_path / "s.json"
    paths = [str(p) for p in dataset["fine"]]
    code = main(["data", "stats", *paths, "--variables", "a", "b", "--log1p", "b", "-o", str(out)])
    assert code == 0 and "target    a" in capsys.readouterr().out
    assert set(json.loads(out.read_text())["groups"]["target"]) == {"a", "b"}
    assert main(["data", "stats", *paths, "--variables", "nope", "-o", str(out)]) == 2
    assert "variable 'nope'" in capsys.readouterr().err
    assert main(["data", "stats", "--config", str(tmp_path / "missing.yaml")]) == 2
