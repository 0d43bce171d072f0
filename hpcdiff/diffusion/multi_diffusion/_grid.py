"""Geometry of a grid of overlapping patches over a reflect-padded image, and its fuse weights.

Coordinates. The image (H, W) is reflect-padded by ``boundary_pix`` at the top/left and by
whatever the grid needs at the bottom/right, giving the padded shape (Hpad, Wpad). With stride
s = patch - overlap_pix - boundary_pix per axis there are n = ceil(H / s) patches per axis;
patch (iy, ix) covers padded rows [iy s_y, iy s_y + Hp) and columns [ix s_x, ix s_x + Wp).
Patches are numbered x-major, p = ix n_y + iy, and row p B + b of a patched (P B, C, Hp, Wp)
tensor is patch p of sample b (the layout of ``physicsnemo``'s ``image_batching``).

Along each axis a patch is at most three segments of the unpadded image (reflected head,
in-image middle, reflected tail); consecutive patches whose segments only shift by the stride
form a run, so the whole grid is a few runs per axis (see :mod:`._kernels`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Any, NamedTuple, cast

import torch

Tensor = torch.Tensor
WINDOWS = ("uniform", "cosine")


class Segment(NamedTuple):
    """Patch-axis range [dst0, dst1) copied from image-axis range [src0, src1), maybe reversed."""

    dst0: int
    dst1: int
    src0: int
    src1: int
    flip: bool


def check_strides(patch_shape: Sequence[int], overlap_pix: int, boundary_pix: int) -> None:
    """ValueError unless the stride patch - overlap_pix - boundary_pix is >= 1 on both axes."""
    if overlap_pix < 0 or boundary_pix < 0:
        raise ValueError(
            f"overlap_pix ({overlap_pix}) and boundary_pix ({boundary_pix}) must be >= 0"
        )
    for name, size in (("patch_shape_x", patch_shape[1]), ("patch_shape_y", patch_shape[0])):
        if size - overlap_pix - boundary_pix < 1:
            raise ValueError(
                f"{name} must verify {name} ({size}) >= 1 + overlap_pix ({overlap_pix}) "
                f"+ boundary_pix ({boundary_pix})"
            )


def check_boundary(patch_shape: Sequence[int], overlap_pix: int, boundary_pix: int) -> None:
    """ValueError unless each patch side exceeds overlap_pix + 2 * boundary_pix."""
    for name, size in (("patch_shape_x", patch_shape[1]), ("patch_shape_y", patch_shape[0])):
        if size <= overlap_pix + 2 * boundary_pix:
            raise ValueError(
                f"{name} ({size}) must verify {name} ({size}) > overlap_pix ({overlap_pix}) "
                f"+ 2 * boundary_pix ({boundary_pix})"
            )


def axis_segments(origin: int, size: int, boundary: int, length: int) -> tuple[Segment, ...]:
    """Split padded range [origin, origin + size) into reflected / in-image image segments."""
    lo, hi = origin - boundary, origin - boundary + size  # image coordinates, may leave [0, L)
    segments = []
    if lo < 0:  # reflection about row 0: image row -q for q < 0
        end = min(hi, 0)
        segments.append(Segment(0, end - lo, 1 - end, 1 - lo, True))
    if max(lo, 0) < min(hi, length):
        a, c = max(lo, 0), min(hi, length)
        segments.append(Segment(a - lo, c - lo, a, c, False))
    if hi > length:  # reflection about row L - 1: image row 2 (L - 1) - q for q >= L
        start = max(lo, length)
        segments.append(
            Segment(start - lo, hi - lo, 2 * length - 1 - hi, 2 * length - 1 - start, True)
        )
    for seg in segments:
        if seg.src0 < 0 or seg.src1 > length:
            pad = max(-lo, hi - length)
            raise RuntimeError(
                f"reflect padding by {pad} pixels needs an image dimension > {pad}, got {length}"
            )
    return tuple(segments)


def window_1d(size: int, ramp: int, window: str) -> Tensor:
    """Blending window along one patch axis (float64): 1 for "uniform"; for "cosine",
    w(i) = r(i) r(size - 1 - i) with r(d) = sin^2(pi/2 (d + 1) / (ramp + 1)) for d < ramp, else 1,
    so the tails of two neighbours overlapping by ``ramp`` pixels sum to exactly 1."""
    if window == "uniform" or ramp <= 0:
        return torch.ones(size, dtype=torch.float64)
    d = torch.arange(size, dtype=torch.float64)
    r = torch.where(d < ramp, torch.sin(0.5 * math.pi * (d + 1) / (ramp + 1)) ** 2, 1.0)
    return r * r.flip(0)


def _shifted(first: tuple[Segment, ...], segs: tuple[Segment, ...], shift: int) -> bool:
    """Whether ``segs`` are the unreflected ``first`` with the image range moved by ``shift``."""
    return len(first) == len(segs) and all(
        not a.flip and not b.flip and (a.dst0, a.dst1, a.src0 + shift) == (b.dst0, b.dst1, b.src0)
        for a, b in zip(first, segs)
    )


@dataclass(frozen=True)
class GridGeometry:
    """Patch grid of an (H, W) image; see the module docstring for the coordinate conventions."""

    img_shape: tuple[int, int]
    patch_shape: tuple[int, int]
    overlap_pix: int
    boundary_pix: int
    window: str = "uniform"
    _factors: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        if self.window not in WINDOWS:
            raise ValueError(f"window must be one of {WINDOWS}, got {self.window!r}")
        check_strides(self.patch_shape, self.overlap_pix, self.boundary_pix)

    @cached_property
    def stride(self) -> tuple[int, int]:
        return tuple(p - self.overlap_pix - self.boundary_pix for p in self.patch_shape)

    @cached_property
    def num(self) -> tuple[int, int]:
        """Patches per axis (n_y, n_x)."""
        return tuple(math.ceil(i / s) for i, s in zip(self.img_shape, self.stride))

    @property
    def patch_num(self) -> int:
        return self.num[0] * self.num[1]

    @cached_property
    def padded_shape(self) -> tuple[int, int]:
        b = self.boundary_pix
        return tuple(
            s * (n - 1) + p + b for s, n, p in zip(self.stride, self.num, self.patch_shape)
        )

    @property
    def pad(self) -> tuple[int, int, int, int]:
        """Padding (left, right, top, bottom) in ``F.pad`` order."""
        (H, W), (Hpad, Wpad), b = self.img_shape, self.padded_shape, self.boundary_pix
        return (b, Wpad - W - b, b, Hpad - H - b)

    def origins(self, axis: int) -> list[int]:
        """Patch origins along ``axis`` (0: y, 1: x) in padded coordinates."""
        return [i * self.stride[axis] for i in range(self.num[axis])]

    def patch_origin(self, p: int) -> tuple[int, int]:
        """Padded-coordinate origin (y0, x0) of patch ``p``."""
        iy, ix = p % self.num[0], p // self.num[0]
        return iy * self.stride[0], ix * self.stride[1]

    @cached_property
    def segments(self) -> tuple[tuple[tuple[Segment, ...], ...], ...]:
        """``segments[axis][i]``: image segments of the i-th patch along ``axis``."""
        return tuple(
            tuple(
                axis_segments(o, self.patch_shape[a], self.boundary_pix, self.img_shape[a])
                for o in self.origins(a)
            )
            for a in (0, 1)
        )

    @cached_property
    def runs(self) -> tuple[tuple[tuple[int, int, tuple[Segment, ...]], ...], ...]:
        """``runs[axis]``: maximal (i0, i1, segments of patch i0) such that patch i of the run
        has the segments of i0 shifted by (i - i0) * stride; patches with reflected segments
        are runs of one."""
        out = []
        for axis in (0, 1):
            s, runs = self.stride[axis], cast(list[list[Any]], [])  # [first, stop, segments]
            for i, segs in enumerate(self.segments[axis]):
                if runs and _shifted(runs[-1][2], segs, (i - runs[-1][0]) * s):
                    runs[-1][1] = i + 1
                else:
                    runs.append([i, i + 1, segs])
            out.append(tuple((i0, i1, segs) for i0, i1, segs in runs))
        return tuple(out)

    def window_1d(self, axis: int) -> Tensor:
        ramp = self.patch_shape[axis] - self.stride[axis]  # overlap of two neighbours
        return window_1d(self.patch_shape[axis], ramp, self.window)

    def coverage_1d(self, axis: int) -> Tensor:
        """Sum over patches of the window along ``axis`` at each padded coordinate (float64)."""
        total = torch.zeros(self.padded_shape[axis], dtype=torch.float64)
        w, size = self.window_1d(axis), self.patch_shape[axis]
        for o in self.origins(axis):
            total[o : o + size] += w
        return total

    def weight_map(self) -> Tensor:
        """Sum over patches of the 2-D window at each padded pixel (Hpad, Wpad), float64; the
        overlap count for the uniform window."""
        return torch.outer(self.coverage_1d(0), self.coverage_1d(1))

    def _axis_factors(self, axis: int, normalized: bool) -> Tensor:
        """(n, size) fuse factors w(i) [/ coverage] on each patch's in-image part, 0 elsewhere."""
        w, b = self.window_1d(axis), self.boundary_pix
        coverage = self.coverage_1d(axis)
        rows = []
        for segs in self.segments[axis]:
            f = torch.zeros_like(w)
            for s in segs:
                if not s.flip:
                    f[s.dst0 : s.dst1] = w[s.dst0 : s.dst1]
                    if normalized:
                        f[s.dst0 : s.dst1] /= coverage[s.src0 + b : s.src1 + b]
            rows.append(f)
        return torch.stack(rows)

    def fuse_weights(
        self, device: torch.device, dtype: torch.dtype, normalized: bool = True
    ) -> Tensor:
        """Cached fuse weight of every patch pixel, (n_x, n_y, Hp, Wp): the window divided by
        the weight map (``normalized``) on the patch's in-image part, 0 elsewhere. Separable:
        the outer product of per-axis factors, since windows and grid are."""
        key = (str(device), dtype, normalized)
        if key not in self._factors:
            fy, fx = (self._axis_factors(a, normalized) for a in (0, 1))
            tiles = fx[:, None, None, :] * fy[None, :, :, None]  # (n_x, n_y, Hp, Wp)
            self._factors[key] = tiles.to(device=device, dtype=dtype)
        return self._factors[key]


@lru_cache(maxsize=64)
def grid_geometry(
    img_shape: tuple[int, int],
    patch_shape: tuple[int, int],
    overlap_pix: int,
    boundary_pix: int,
    window: str = "uniform",
) -> GridGeometry:
    """The (cached, shared) geometry of one grid: its fuse weights are computed once per
    device and dtype (P Hp Wp values, i.e. 1 / (B C) of a patched tensor)."""
    return GridGeometry(tuple(img_shape), tuple(patch_shape), overlap_pix, boundary_pix, window)


def accum_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation / fused dtype: float32 for half, bfloat16 and integers, float64 stays."""
    return torch.promote_types(dtype, torch.float32)
