"""Copy kernels of the patch grid: extraction, fusing and their adjoints, and autograd Functions.

Rows [start, stop) of a patched (P B, C, Hp, Wp) tensor split into a few rectangles of patches
(ix range x iy range x samples), each a view (n_x, n_y, B, C, Hp, Wp). Along an axis a run of
patches (see ``GridGeometry.runs``) and one of its segments is a *piece*: patch j of the piece
reads image coordinates src0 + (j - j0) s + [0, dst1 - dst0). A pair of pieces is then one
strided view of the image, (n_x, n_y, B, C, h, w) with strides (s_x, s_y, ...), so extraction is
one ``copy_`` per pair of pieces, never a padded copy or an unfold. In-place adds into the image
(fuse, adjoint of extraction) take every k-th patch per op, k = ceil(h / s), so that the
windows written by one op are disjoint.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import torch

from hpcdiff.diffusion.multi_diffusion._grid import GridGeometry, accum_dtype

Tensor = torch.Tensor


class Piece(NamedTuple):
    """Patches j0 <= j < j1 along one axis map patch range [dst0, dst1) to image (or tile)
    range starting at src0 + (j - j0) * stride, reversed when ``flip``."""

    j0: int
    j1: int
    dst0: int
    dst1: int
    src0: int
    flip: bool


@lru_cache(maxsize=1024)
def extract_pieces(geom: GridGeometry, axis: int, lo: int, hi: int) -> tuple[Piece, ...]:
    """All image segments of patches lo <= j < hi along ``axis``."""
    s, out = geom.stride[axis], []
    for i0, i1, segs in geom.runs[axis]:
        j0, j1 = max(i0, lo), min(i1, hi)
        if j0 < j1:
            out += [Piece(j0, j1, g.dst0, g.dst1, g.src0 + (j0 - i0) * s, g.flip) for g in segs]
    return tuple(out)


@lru_cache(maxsize=1024)
def crop_pieces(
    geom: GridGeometry, axis: int, lo: int, hi: int, offset: int, size: int
) -> tuple[Piece, ...]:
    """In-image segments of patches lo <= j < hi clipped to the tile [offset, offset + size),
    in tile coordinates; patches cut by the tile edge become pieces of one."""
    s, out = geom.stride[axis], []
    for i0, i1, segs in geom.runs[axis]:
        g = next(g for g in segs if not g.flip)
        n = g.dst1 - g.dst0
        j0, j1 = max(i0, lo), min(i1, hi)
        # Fully inside: offset <= g.src0 + (j - i0) s and g.src0 + (j - i0) s + n <= offset + size.
        ja = max(j0, i0 - (g.src0 - offset) // s)
        jb = min(j1, i0 + (offset + size - n - g.src0) // s + 1)
        if ja < jb:
            out.append(Piece(ja, jb, g.dst0, g.dst1, g.src0 + (ja - i0) * s - offset, False))
        for j in range(j0, j1):
            if ja <= j < jb:
                continue
            a = g.src0 + (j - i0) * s
            a_in, c_in = max(a, offset), min(a + n, offset + size)
            if a_in < c_in:
                dst0, dst1 = g.dst0 + a_in - a, g.dst0 + c_in - a
                out.append(Piece(j, j + 1, dst0, dst1, a_in - offset, False))
    return tuple(out)


def rectangles(start: int, stop: int, batch: int, ny: int) -> list[tuple[int, ...]]:
    """Rows [start, stop) as rectangles (ix0, ix1, iy0, iy1, b0, b1, r): patches ix0 <= ix < ix1,
    iy0 <= iy < iy1 of samples b0 <= b < b1, stored from chunk row r on (p = ix n_y + iy)."""
    rects, p, r = [], start // batch, 0
    if start % batch:  # leading part of one patch's samples
        b1 = min(batch, stop - p * batch)
        rects.append((p // ny, p // ny + 1, p % ny, p % ny + 1, start % batch, b1, 0))
        r, p = b1 - start % batch, p + 1
    p_end = stop // batch
    while p < p_end:  # whole samples: a partial column, whole columns, a partial column
        ix, iy = divmod(p, ny)
        if iy == 0 and p_end - p >= ny:
            cols = (p_end - p) // ny
            rects.append((ix, ix + cols, 0, ny, 0, batch, r))
            n = cols * ny
        else:
            n = min(ny, iy + p_end - p) - iy
            rects.append((ix, ix + 1, iy, iy + n, 0, batch, r))
        r, p = r + n * batch, p + n
    if p * batch < stop:  # trailing part of one patch's samples
        rects.append((p // ny, p // ny + 1, p % ny, p % ny + 1, 0, stop - p * batch, r))
    return rects


def _grid_view(t: Tensor, b0: int, nb: int, py: Piece, px: Piece, step_y: int, step_x: int):
    """View (n_x, n_y, nb, C, h, w) of ``t`` (B, C, H, W) holding the pieces' windows."""
    sB, sC, sH, sW = t.stride()
    size = (px.j1 - px.j0, py.j1 - py.j0, nb, t.shape[1], py.dst1 - py.dst0, px.dst1 - px.dst0)
    stride = (step_x * sW, step_y * sH, sB, sC, sH, sW)
    return t.as_strided(size, stride, t.storage_offset() + b0 * sB + py.src0 * sH + px.src0 * sW)


def _patch_view(rows: Tensor, rect: tuple[int, ...], py: Piece, px: Piece) -> Tensor:
    """The pieces' part (n_x, n_y, nb, C, h, w) of the rectangle's patch rows (nb, C, Hp, Wp)."""
    ix0, ix1, iy0, iy1, b0, b1, _ = rect
    view = rows.view(ix1 - ix0, iy1 - iy0, b1 - b0, *rows.shape[1:])
    x_sel, y_sel = slice(px.j0 - ix0, px.j1 - ix0), slice(py.j0 - iy0, py.j1 - iy0)
    return view[x_sel, y_sel, :, :, py.dst0 : py.dst1, px.dst0 : px.dst1]


def _disjoint_ops(py: Piece, px: Piece, sy: int, sx: int):
    """Split a pair of pieces into ops whose image windows are disjoint, every k-th patch per
    axis with k = ceil(h / s). Yields ((x, y) slices of the pair's patches, the op's pieces
    (j1 - j0 = its number of patches), its steps (k_y s_y, k_x s_x))."""
    ky = min(py.j1 - py.j0, -(-(py.dst1 - py.dst0) // sy))
    kx = min(px.j1 - px.j0, -(-(px.dst1 - px.dst0) // sx))
    for gy in range(ky):
        ny = len(range(gy, py.j1 - py.j0, ky))
        qy = py._replace(j0=py.j0 + gy, j1=py.j0 + gy + ny, src0=py.src0 + gy * sy)
        for gx in range(kx):
            nx = len(range(gx, px.j1 - px.j0, kx))
            qx = px._replace(j0=px.j0 + gx, j1=px.j0 + gx + nx, src0=px.src0 + gx * sx)
            yield (slice(gx, None, kx), slice(gy, None, ky)), qy, qx, ky * sy, kx * sx


def _rect_rows(rows: Tensor, rect: tuple[int, ...]) -> Tensor:
    """The rectangle's rows of a chunk, contiguous (a view unless ``rows`` is not)."""
    ix0, ix1, iy0, iy1, b0, b1, r = rect
    return rows[r : r + (ix1 - ix0) * (iy1 - iy0) * (b1 - b0)].contiguous()


def _flipped(block: Tensor, py: Piece, px: Piece) -> Tensor:
    flip = [d for d, f in ((4, py.flip), (5, px.flip)) if f]
    return block.flip(flip) if flip else block


def _weights(tiles: Tensor, py: Piece, px: Piece) -> Tensor:
    """Fuse weights (n_x, n_y, 1, 1, h, w) of the pieces' patches, a view of the cache."""
    block = tiles[px.j0 : px.j1, py.j0 : py.j1, py.dst0 : py.dst1, px.dst0 : px.dst1]
    return block[:, :, None, None]


def extract_into(out: Tensor, x: Tensor, geom: GridGeometry, start: int) -> Tensor:
    """Copy rows [start, start + len(out)) of the patched ``x`` (B, C, H, W) into ``out``."""
    (sy, sx), ny = geom.stride, geom.num[0]
    for rect in rectangles(start, start + out.shape[0], x.shape[0], ny):
        ix0, ix1, iy0, iy1, b0, b1, _ = rect
        rows = _rect_rows(out, rect)
        for px in extract_pieces(geom, 1, ix0, ix1):
            for py in extract_pieces(geom, 0, iy0, iy1):
                src = _grid_view(x, b0, b1 - b0, py, px, sy, sx)
                _patch_view(rows, rect, py, px).copy_(_flipped(src, py, px))
    return out


def extract_adjoint_into(gx: Tensor, g: Tensor, geom: GridGeometry, start: int) -> Tensor:
    """Adjoint of :func:`extract_into`: add patch rows ``g`` back onto the image ``gx``."""
    (sy, sx), ny = geom.stride, geom.num[0]
    for rect in rectangles(start, start + g.shape[0], gx.shape[0], ny):
        ix0, ix1, iy0, iy1, b0, b1, _ = rect
        rows = _rect_rows(g, rect)
        for px in extract_pieces(geom, 1, ix0, ix1):
            for py in extract_pieces(geom, 0, iy0, iy1):
                block = _flipped(_patch_view(rows, rect, py, px), py, px)
                for sel, qy, qx, step_y, step_x in _disjoint_ops(py, px, sy, sx):
                    target = _grid_view(gx, b0, b1 - b0, qy, qx, step_y, step_x)
                    target.add_(block[sel])
    return gx


def fuse_into(
    acc: Tensor,
    patches: Tensor,
    geom: GridGeometry,
    start: int,
    offset: tuple[int, int] = (0, 0),
    normalized: bool = True,
) -> Tensor:
    """acc += sum_p (w / sum w) * patch_p over rows [start, start + len(patches)); ``acc``
    (B, C, h, w) is the tile of the image whose upper-left pixel is ``offset``."""
    (sy, sx), ny = geom.stride, geom.num[0]
    tiles = geom.fuse_weights(acc.device, acc.dtype, normalized)
    (h, w), (oy, ox) = acc.shape[-2:], offset
    for rect in rectangles(start, start + patches.shape[0], acc.shape[0], ny):
        ix0, ix1, iy0, iy1, b0, b1, _ = rect
        rows = _rect_rows(patches, rect)
        for px in crop_pieces(geom, 1, ix0, ix1, ox, w):
            for py in crop_pieces(geom, 0, iy0, iy1, oy, h):
                block, weight = _patch_view(rows, rect, py, px), _weights(tiles, py, px)
                for sel, qy, qx, step_y, step_x in _disjoint_ops(py, px, sy, sx):
                    target = _grid_view(acc, b0, b1 - b0, qy, qx, step_y, step_x)
                    target.addcmul_(block[sel], weight[sel])
    return acc


def fuse_adjoint(g: Tensor, geom: GridGeometry, start: int, stop: int, dtype: torch.dtype):
    """Adjoint of :func:`fuse_into` for rows [start, stop): weighted in-image windows of ``g``."""
    (sy, sx), ny = geom.stride, geom.num[0]
    out = g.new_zeros((stop - start, g.shape[1], *geom.patch_shape), dtype=dtype)
    tiles = geom.fuse_weights(g.device, g.dtype)
    H, W = g.shape[-2:]
    for rect in rectangles(start, stop, g.shape[0], ny):
        ix0, ix1, iy0, iy1, b0, b1, _ = rect
        rows = _rect_rows(out, rect)
        for px in crop_pieces(geom, 1, ix0, ix1, 0, W):
            for py in crop_pieces(geom, 0, iy0, iy1, 0, H):
                src = _grid_view(g, b0, b1 - b0, py, px, sy, sx)
                torch.mul(src, _weights(tiles, py, px), out=_patch_view(rows, rect, py, px))
    return out


class ExtractGrid(torch.autograd.Function):
    """Rows [start, stop) of the grid-patched image, differentiable (adjoint: add back)."""

    @staticmethod
    def forward(ctx, x: Tensor, geom: GridGeometry, start: int, stop: int) -> Tensor:
        ctx.geom, ctx.start, ctx.shape, ctx.dtype = geom, start, x.shape, x.dtype
        out = x.new_empty((stop - start, x.shape[1], *geom.patch_shape))
        return extract_into(out, x, geom, start)

    @staticmethod
    def backward(ctx, g: Tensor):
        gx = g.new_zeros(ctx.shape, dtype=accum_dtype(ctx.dtype))
        extract_adjoint_into(gx, g, ctx.geom, ctx.start)
        return gx.to(ctx.dtype), None, None, None


class FuseGrid(torch.autograd.Function):
    """Normalized-window fuse of consecutive row chunks of a (P B, C, Hp, Wp) tensor."""

    @staticmethod
    def forward(ctx, geom: GridGeometry, batch: int, *chunks: Tensor) -> Tensor:
        first = chunks[0]
        dtype = accum_dtype(first.dtype)
        acc = first.new_zeros((batch, first.shape[1], *geom.img_shape), dtype=dtype)
        start = 0
        for chunk in chunks:
            fuse_into(acc, chunk, geom, start)
            start += chunk.shape[0]
        ctx.geom, ctx.rows = geom, [(c.shape[0], c.dtype) for c in chunks]
        return acc

    @staticmethod
    def backward(ctx, g: Tensor):
        grads, start = [], 0
        for rows, dtype in ctx.rows:
            grads.append(fuse_adjoint(g, ctx.geom, start, start + rows, dtype))
            start += rows
        return (None, None, *grads)


class ExtractRandom(torch.autograd.Function):
    """Patches at corners ``indices`` (P, 2) from x (B, C, H, W) -> (P B, C, Hp, Wp) without a
    host sync; the adjoint scatters them back with ``index_add_``."""

    @staticmethod
    def forward(ctx, x: Tensor, indices: Tensor, patch_shape: tuple[int, int]) -> Tensor:
        (Hp, Wp), C = patch_shape, x.shape[1]
        windows = x.unfold(2, Hp, 1).unfold(3, Wp, 1)  # view (B, C, H', W', Hp, Wp)
        out = windows.permute(2, 3, 0, 1, 4, 5)[indices[:, 0], indices[:, 1]]  # (P, B, C, Hp, Wp)
        ctx.save_for_backward(indices)
        ctx.shape, ctx.dtype, ctx.patch_shape = x.shape, x.dtype, patch_shape
        return out.reshape(-1, C, Hp, Wp)

    @staticmethod
    def backward(ctx, g: Tensor):
        (indices,), (B, C, H, W), (Hp, Wp) = ctx.saved_tensors, ctx.shape, ctx.patch_shape
        P = indices.shape[0]
        rel = torch.arange(Hp, device=g.device)[:, None] * W + torch.arange(Wp, device=g.device)
        flat = (indices[:, 0] * W + indices[:, 1])[:, None] + rel.reshape(1, -1)  # (P, Hp Wp)
        src = g.reshape(P, B, C, Hp * Wp).permute(1, 2, 0, 3).reshape(B, C, P * Hp * Wp)
        gx = g.new_zeros((B, C, H * W), dtype=accum_dtype(ctx.dtype))
        gx.index_add_(2, flat.reshape(-1), src.to(gx.dtype))
        return gx.reshape(B, C, H, W).to(ctx.dtype), None, None


# Entry points: torch.compile runs them eagerly (a graph break) instead of tracing the Python
# loops over pieces; they are already single strided copies per piece pair.
@torch.compiler.disable
def extract_grid(x: Tensor, geom: GridGeometry, start: int, stop: int) -> Tensor:
    """Rows [start, stop) of the grid patches of x (B, C, H, W), differentiable."""
    return ExtractGrid.apply(x, geom, start, stop)


@torch.compiler.disable
def fuse_grid(geom: GridGeometry, batch: int, *chunks: Tensor) -> Tensor:
    """Fuse consecutive row chunks of grid patches into (B, C, H, W), differentiable."""
    return FuseGrid.apply(geom, batch, *chunks)


@torch.compiler.disable
def extract_random(x: Tensor, indices: Tensor, patch_shape: tuple[int, int]) -> Tensor:
    """Patches (P B, C, Hp, Wp) at corners ``indices`` (P, 2), differentiable."""
    return ExtractRandom.apply(x, indices, patch_shape)
