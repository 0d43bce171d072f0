"""What the stream hands the trainer each step, and random patches cut from it.

A :class:`Batch` holds B windows of the global grid (a tile + margin, or a chunk-aligned
window in patch mode) with their global origin; :func:`cut_patches` cuts P random patches
of every window (the same P local positions for all B, as ``RandomPatching2D`` does) and
returns them patch-major, ``index = p * B + b``, with their global positions.

>>> data = torch.arange(2 * 1 * 4 * 6, dtype=torch.float32).reshape(2, 1, 4, 6)
>>> b = Batch(data=data, mask=torch.ones_like(data, dtype=torch.bool),
...           origin=torch.tensor([[10, 20], [10, 20]]), time_index=torch.tensor([3, 4]))
>>> p = cut_patches(b, (2, 3), 5, generator=torch.Generator().manual_seed(0))
>>> p.data.shape, p.origin.shape
(torch.Size([10, 1, 2, 3]), torch.Size([10, 2]))
>>> r, c = (p.origin[0] - b.origin[0]).tolist()
>>> torch.equal(p.data[0, 0], data[0, 0, r:r + 2, c:c + 3])
True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor


@dataclass
class Batch:
    """B windows of the global grid for one training step.

    Attributes
    ----------
    data : (B, C, h, w) float32, target variables normalized, 0 where missing.
    mask : (B, C, h, w) bool, True where the target is valid; ``mask.float()`` is the
        ``weight`` of ``WeightedMSEDSMLoss``.
    origin : (B, 2) int64, global (row, col) of ``data[b, :, 0, 0]``.
    time_index : (B,) int64, global time indices.
    condition : (B, Cc, h, w) float32 or None, coarse conditions regridded to the window.
    static : (B, Cs, h, w) float32 or None, static fields on the window.
    state : resume state of the stream after this batch (``DataStream.load_state_dict``).
    masked : windows of this batch that were all missing and kept with zero weight.
    """

    data: Tensor
    mask: Tensor
    origin: Tensor
    time_index: Tensor
    condition: Tensor | None = None
    static: Tensor | None = None
    state: dict = field(default_factory=dict)
    masked: int = 0

    def _map(self, fn) -> Batch:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = fn(value) if isinstance(value, Tensor) else value
        return Batch(**out)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """This batch on ``device``."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Batch:
        """This batch in page-locked host memory (for asynchronous copies to a GPU)."""
        return self._map(lambda t: t.pin_memory())

    @property
    def weight(self) -> Tensor:
        """(B, C, h, w) float loss weight: 1 where valid, 0 where missing."""
        return self.mask.to(self.data.dtype)


@dataclass
class PatchBatch:
    """P patches of each of B windows, patch-major (``index = p * B + b``).

    Attributes
    ----------
    data, mask, condition, static : (P*B, ., hp, wp) patches of the Batch fields.
    origin : (P*B, 2) int64 global (row, col) of each patch's top-left cell.
    """

    data: Tensor
    mask: Tensor
    origin: Tensor
    condition: Tensor | None = None
    static: Tensor | None = None

    @property
    def weight(self) -> Tensor:
        return self.mask.to(self.data.dtype)

    def global_index(self) -> Tensor:
        """(P*B, 2, hp, wp) int64 global (row, col) of every patch cell."""
        hp, wp = self.data.shape[-2:]
        dev = self.origin.device
        rows = self.origin[:, 0, None, None] + torch.arange(hp, device=dev)[:, None]
        cols = self.origin[:, 1, None, None] + torch.arange(wp, device=dev)[None, :]
        return torch.stack(torch.broadcast_tensors(rows, cols), dim=1)


def patch_corners(
    window_shape: Sequence[int],
    patch_shape: Sequence[int],
    patch_num: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """(P, 2) random local top-left corners, uniform so that patches lie inside the window."""
    (h, w), (hp, wp) = window_shape, patch_shape
    if hp > h or wp > w:
        raise ValueError(f"patch_shape {tuple(patch_shape)} exceeds window {tuple(window_shape)}")
    rows = torch.randint(0, h - hp + 1, (patch_num,), generator=generator, device=device)
    cols = torch.randint(0, w - wp + 1, (patch_num,), generator=generator, device=device)
    return torch.stack([rows, cols], dim=1)


# dtypes whose CPU tensors are stacked through numpy (see _gather)
_NUMPY_DTYPES = (torch.float16, torch.float32, torch.float64, torch.bool, torch.int32, torch.int64)


def _gather(x: Tensor | None, starts: list[list[int]], hp: int, wp: int) -> Tensor | None:
    """(B, C, h, w) -> (P*B, C, hp, wp): the patches at local ``starts`` (P row/col pairs).

    One copy, patch-major. CPU tensors are stacked by numpy, single-threaded: ``torch.stack``
    runs one OpenMP-parallel copy per patch and each waits for a worker while the prefetch
    thread holds a core (8 patches of a (1, 4, 512, 1024) tile, 2 torch threads on 2 cores:
    4 ms numpy, 290 ms torch.stack, 20-30 ms for an advanced-indexing gather).
    """
    if x is None:
        return None
    if x.device.type == "cpu" and x.dtype in _NUMPY_DTYPES and not x.requires_grad:
        xn = x.numpy()
        out = torch.from_numpy(np.stack([xn[:, :, r : r + hp, c : c + wp] for r, c in starts]))
    else:
        out = torch.stack([x[:, :, r : r + hp, c : c + wp] for r, c in starts])
    return out.reshape(-1, x.shape[1], hp, wp)  # (P, B, C, hp, wp) -> (P*B, C, hp, wp)


def cut_patches(
    batch: Batch,
    patch_shape: Sequence[int],
    patch_num: int,
    generator: torch.Generator | None = None,
    corners: Tensor | None = None,
) -> PatchBatch:
    """Cut ``patch_num`` random patches (same local corners for all B) of every window.

    ``corners`` (P, 2) fixes the local top-left corners instead of drawing them; a corner
    that puts a patch outside the window raises ValueError.
    """
    if patch_num < 1:
        raise ValueError(f"patch_num must be >= 1, got {patch_num}")
    dev = batch.data.device
    if corners is None:
        corners = patch_corners(batch.data.shape[-2:], patch_shape, patch_num, generator)
    hp, wp = int(patch_shape[0]), int(patch_shape[1])
    h, w = batch.data.shape[-2:]
    starts = corners.tolist()  # P (row, col) pairs: one small copy if on an accelerator
    if corners.ndim != 2 or corners.shape[1] != 2 or corners.shape[0] == 0:
        raise ValueError(f"corners must have shape (P, 2), got {tuple(corners.shape)}")
    outside = [(r, c) for r, c in starts if not (0 <= r <= h - hp and 0 <= c <= w - wp)]
    if outside:
        raise ValueError(f"corners {outside[0]} put a {hp}x{wp} patch outside the {h}x{w} window")
    corners = corners.to(dev)
    P, B = corners.shape[0], batch.data.shape[0]
    origin = (corners[:, None, :] + batch.origin.to(dev)[None, :, :]).reshape(P * B, 2)
    return PatchBatch(
        data=_gather(batch.data, starts, hp, wp),
        mask=_gather(batch.mask, starts, hp, wp),
        origin=origin,
        condition=_gather(batch.condition, starts, hp, wp),
        static=_gather(batch.static, starts, hp, wp),
    )
