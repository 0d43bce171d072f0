"""Tile geometry (splits, margins, chunk math) and the separable bilinear regridder."""

from __future__ import annotations

import numpy as np
import pytest

from hpcdiff.data.errors import DataError
from hpcdiff.data.regrid import Regridder, axis_weights
from hpcdiff.data.tiles import Tile, split_domain, tile_for_rank


@pytest.mark.parametrize("grid, procs, align", [((100, 60), (2, 3), 1), ((1000, 512), (3, 2), 256)])
def test_split_domain_partitions_the_grid(grid, procs, align):
    tiles = split_domain(grid, procs, align)
    cover = np.zeros(grid, int)
    for t in tiles:
        cover[t.slices()] += 1
    assert (cover == 1).all() and len(tiles) == procs[0] * procs[1]
    inner = [t.row0 for t in tiles] + [t.col0 for t in tiles]
    assert all(v % align == 0 for v in inner)
    assert tile_for_rank(grid, procs, 1, align) == tiles[1]


def test_grow_relative_and_chunks():
    t = Tile(16, 48, 32, 64)
    g = t.grow((4, 8), (64, 70))
    assert g == Tile(12, 52, 24, 70)
    assert t.relative_to(g) == Tile(4, 36, 8, 40)
    assert g.chunk_span((1, 16, 32)) == ((0, 4), (0, 3)) and g.n_chunks((16, 32)) == 12
    assert g.aligned((1, 16, 32), (64, 70)) == Tile(0, 64, 0, 70)
    with pytest.raises(ValueError, match="non-empty"):
        Tile(3, 3, 0, 1)
    with pytest.raises(ValueError, match="not inside"):
        g.relative_to(t)


def test_regrid_reproduces_linear_fields_exactly():
    fy, fx = np.linspace(0.1, 9.9, 50), np.linspace(-5, 5, 40)
    cy, cx = np.linspace(0, 10, 11)[::-1], np.linspace(-6, 6, 13)  # descending lat is fine
    r = Regridder(fy, fx, cy, cx)
    coarse = (2 * cy[:, None] - 3 * cx[None, :] + 1).astype(np.float32)
    window = Tile(7, 31, 5, 22)
    src = r.source_window(window)
    got = r.apply(coarse[src.slices()][None], window)[0]
    want = 2 * fy[7:31, None] - 3 * fx[None, 5:22] + 1
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


def test_regrid_index_space_and_coverage():
    r = Regridder(None, None, None, None, fine_shape=(8, 8), coarse_shape=(2, 2))
    coarse = np.array([[0.0, 1.0], [2.0, 3.0]], np.float32)
    out = r.apply(coarse, Tile(0, 8, 0, 8))
    assert out[0, 0] == 0.0 and out[-1, -1] == 3.0  # clamped at the edges
    np.testing.assert_allclose(out.mean(), coarse.mean(), rtol=1e-6)
    with pytest.raises(DataError, match="does not cover"):
        axis_weights(np.array([0.0, 50.0]), np.array([0.0, 1.0, 2.0]))
    with pytest.raises(DataError, match="monotonic"):
        axis_weights(np.array([0.5]), np.array([0.0, 2.0, 1.0]))
