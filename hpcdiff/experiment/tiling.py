"""Tiled (domain-decomposed) training: which part of the grid a rank reads, where its patches lie.

The ranks of one domain group (``domain.grid = [py, px]``, D = py px ranks) train on the same
samples and split the *patch positions*, not the pixels: the corners of all Hp x Wp patches,
``[0, H - Hp] x [0, W - Wp]``, are cut into the D tiles of :func:`split_domain` (edges on HDF5
chunk multiples where that keeps the tiles balanced within 10 %), and a rank reads its corner
tile grown by ``Hp - 1`` rows and ``Wp - 1`` columns at the high edges: its *window*. So
every global patch position belongs to exactly one rank, patches straddle tile borders by up
to the patch size minus one, and a rank holds at most ``ceil((H - Hp + 1) / py) + Hp - 1``
rows of any field (plus chunk alignment).

>>> training_window((100, 60), (16, 16), (2, 1), domain_rank=1)
Tile(row0=42, row1=100, col0=0, col1=60)
>>> corners = draw_corners((58, 60), (16, 16), patches=3, batch=2)
>>> tuple(corners.shape), bool((corners[..., 0] <= 42).all() and (corners[..., 1] <= 44).all())
((3, 2, 2), True)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hpcdiff.config import ConfigError
from hpcdiff.data.tiles import Tile, tile_for_rank

Tensor = torch.Tensor


def training_window(
    grid_shape: Sequence[int],
    patch_shape: Sequence[int],
    domain_grid: Sequence[int],
    domain_rank: int,
    align: Sequence[int] = (1, 1),
) -> Tile:
    """The window (tile + patch margin) that domain rank ``domain_rank`` reads and trains on."""
    (H, W), (Hp, Wp) = grid_shape, patch_shape
    if Hp > H or Wp > W:
        raise ConfigError(
            f"config key 'data.patch_shape': [{Hp}, {Wp}] is larger than the grid [{H}, {W}]"
        )
    corner_space = (H - Hp + 1, W - Wp + 1)
    if any(c < g for c, g in zip(corner_space, domain_grid)):
        raise ConfigError(
            f"config key 'domain.grid': {list(domain_grid)} tiles need at least as many patch "
            f"positions per axis, but a [{H}, {W}] grid has {list(corner_space)} positions "
            f"for data.patch_shape [{Hp}, {Wp}]"
        )
    corners = tile_for_rank(corner_space, domain_grid, domain_rank, _balanced(
        corner_space, domain_grid, align))  # fmt: skip
    return Tile(corners.row0, corners.row1 + Hp - 1, corners.col0, corners.col1 + Wp - 1)


def _balanced(corner_space: Sequence[int], grid: Sequence[int], align: Sequence[int]):
    """``align`` per axis where chunk-aligned tile edges keep the largest tile within 10 % of
    the balanced split (every rank draws as many patches, so tile sizes set the sampling
    density); 1 (cell by cell) where chunks are too coarse for that."""
    out = []
    for n, parts, a in zip(corner_space, grid, align):
        units = -(-n // a)
        largest = -(-units // parts) * a if parts <= units else n + 1
        out.append(int(a) if largest <= 1.1 * -(-n // parts) else 1)
    return tuple(out)


def draw_corners(
    window_shape: Sequence[int],
    patch_shape: Sequence[int],
    patches: int,
    batch: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Uniform patch corners (P, B, 2) (row, col) inside a window, drawn independently per
    sample; on the CPU (they index host-side geometry, and cost no device sync)."""
    high = torch.tensor([int(w) - int(p) + 1 for w, p in zip(window_shape, patch_shape)])
    if (high < 1).any():
        raise ValueError(f"patch {tuple(patch_shape)} does not fit the window {window_shape}")
    u = torch.rand(patches, batch, 2, generator=generator, dtype=torch.float64)
    return (u * high).long().clamp_max(high - 1)


def gather_patches(x: Tensor, corners: Tensor, patch_shape: Sequence[int]) -> Tensor:
    """Patches (P B, C, Hp, Wp) of ``x`` (B, C, h, w) at ``corners`` (P, B, 2); row p B + b is
    patch p of sample b (the layout of :mod:`hpcdiff.diffusion.multi_diffusion`)."""
    P, B = corners.shape[:2]
    Hp, Wp = int(patch_shape[0]), int(patch_shape[1])
    corners = corners.to(x.device)
    rows = corners[..., 0, None] + torch.arange(Hp, device=x.device)  # (P, B, Hp)
    cols = corners[..., 1, None] + torch.arange(Wp, device=x.device)  # (P, B, Wp)
    b = torch.arange(B, device=x.device).expand(P, B)
    out = x[b[..., None, None], :, rows[..., :, None], cols[..., None, :]]  # (P, B, Hp, Wp, C)
    return out.permute(0, 1, 4, 2, 3).reshape(P * B, x.shape[1], Hp, Wp)
