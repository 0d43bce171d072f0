"""Multi-diffusion predictors on tiles (MultiDiffusion, Bar-Tal et al. 2023; DPS, Chung et al.
2023): the x0 prediction and the guided score of this rank's tile of the global state.

Per evaluation each rank

1. posts the halo exchange of x_t its border patches need (``comm.halo``, non-blocking),
2. denoises its interior patches, whose reflect-padded windows lie inside its own tile, while
   the halo is in flight (``overlap``), then waits and denoises its border patches; patch
   (iy, ix) belongs to the tile holding its anchor ``clamp(origin - boundary_pix, 0, L - 1)``
   per axis, so every patch runs exactly once,
3. adds them, weighted by window / global weight map as in ``GridPatching2D.fuse``, into a
   buffer over its tile and the image region its patches cover,
4. sends the parts of that buffer lying in other tiles to their owners (``comm.halo``).

The sum on each tile is then the single-process fuse, and solver updates are pointwise, so
deterministic solvers give the single-process result for any rank count.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, cast

import torch
from tensordict import TensorDict

from hpcdiff import nvtx
from hpcdiff.data.tiles import Tile
from hpcdiff.diffusion.multi_diffusion import MultiDiffusionPredictor, accum_dtype
from hpcdiff.distributed.domain import DomainMesh, gather_region, reduce_regions, start_gather

Tensor = torch.Tensor


class Rows(NamedTuple):
    """A run of K = n B patch rows of one grid column: patches ``x`` (K, C, Hp, Wp), times
    ``t`` (K,), first row ``start`` in the global patched layout and ``local`` among this
    rank's patches, batch size ``B``, positional embedding ``pos_embd`` (K, C_PE, Hp, Wp)."""

    x: Tensor
    t: Tensor
    start: int
    local: int
    B: int
    pos_embd: Tensor | None


Term = Callable[[Rows], Tensor]  # what is fused per patch row: (K, C, Hp, Wp)


class AxisPlan(NamedTuple):
    """Along one axis: owned patches [i0, i1), the image range ``need`` their reflect-padded
    window reads (``index``: window position -> offset in ``need``), the image range
    ``cover`` their in-image parts cover, and the owned patches [a0, a1) that read only
    inside the tile (interior; a0 == a1 when there are none)."""

    i0: int
    i1: int
    need: tuple[int, int]
    index: Tensor
    cover: tuple[int, int]
    inner: tuple[int, int]


def _axis_plan(lo: int, hi: int, L: int, size: int, stride: int, b: int) -> AxisPlan | None:
    """The :class:`AxisPlan` of tile range [lo, hi); None when the tile anchors no patch."""
    n = math.ceil(L / stride)
    anchors = [min(max(i * stride - b, 0), L - 1) for i in range(n)]
    owned = [i for i, a in enumerate(anchors) if lo <= a < hi]
    if not owned:
        return None
    i0, i1 = owned[0], owned[-1] + 1
    q = torch.arange(i0 * stride, (i1 - 1) * stride + size) - b  # image coords of the window
    q = q.abs()
    q = torch.where(q > L - 1, 2 * (L - 1) - q, q)  # reflect into [0, L)
    n0, n1 = int(q.min()), int(q.max()) + 1
    f0, f1 = max(i0 * stride - b, 0), min((i1 - 1) * stride + size - b, L)
    # Reads of successive patches move right (reflected ends stay put), so the patches
    # reading inside [lo, hi) are a contiguous range.
    reads = q.unfold(0, size, stride)  # (i1 - i0, size)
    inside = ((reads.min(1).values >= lo) & (reads.max(1).values < hi)).nonzero().flatten()
    a0, a1 = (i0 + int(inside[0]), i0 + int(inside[-1]) + 1) if len(inside) else (i0, i0)
    return AxisPlan(i0, i1, (n0, n1), q - n0, (f0, f1), (a0, a1))


class _Take(NamedTuple):
    """Gather along one dim: a narrow view when the index is a contiguous run, else a copy."""

    start: int
    length: int
    index: Tensor | None

    @classmethod
    def of(cls, index: Tensor) -> _Take:
        run = bool((index.diff() == 1).all()) if len(index) > 1 else True
        return cls(int(index[0]), len(index), None if run else index)

    def __call__(self, t: Tensor, dim: int) -> Tensor:
        if self.index is None:
            return t.narrow(dim, self.start, self.length)
        return t.index_select(dim, self.index.to(t.device))


class _Chunk(NamedTuple):
    """Patches iy0 <= iy < iy1 of grid column ix; the (rows, cols) their windows read in
    their source (tile or halo region) and in the image."""

    ix: int
    iy0: int
    iy1: int
    src: tuple[_Take, _Take]
    image: tuple[Tensor, Tensor]


def _bounding(a: Tile, b: Tile | None) -> Tile:
    if b is None:
        return a
    return Tile(min(a.row0, b.row0), max(a.row1, b.row1), min(a.col0, b.col0), max(a.col1, b.col1))


class TiledMultiDiffusionPredictor:
    """x0-predictor on this rank's tile (B, C, h, w) of the global state, equal to the tile of
    ``MultiDiffusionPredictor(x, t)`` on the full state (halo exchange inside: every rank of
    the domain group must call it the same number of times).

    Parameters
    ----------
    predictor : MultiDiffusionPredictor
        Configured with ``set_patching``; its model, condition, positional embedding and
        ``chunk_size`` (patch rows per model call) are used as they are.
    mesh : DomainMesh
        This rank's place in the domain group; ``mesh.shape`` is the global (H, W).
    overlap : bool, default True
        Denoise interior patches while the halo exchange is in flight.
    condition : Tensor or TensorDict, optional
        This rank's tile (B, C_cond, h, w) of a condition the model patches like x
        (``condition_patch``), instead of a global condition bound to ``predictor``: only the
        owned patches are kept (halo exchange here, so construct on every rank of the group).
    """

    def __init__(
        self,
        predictor: MultiDiffusionPredictor,
        mesh: DomainMesh,
        overlap: bool = True,
        condition: Tensor | TensorDict | None = None,
    ) -> None:
        patching = predictor.patching
        if patching is None:
            raise RuntimeError("call predictor.set_patching(...) before tiling it")
        if tuple(patching.img_shape) != tuple(mesh.shape):
            raise ValueError(
                f"mesh.shape {tuple(mesh.shape)} does not match the predictor's global shape "
                f"{tuple(patching.img_shape)}"
            )
        self.predictor, self.mesh, self.patching, self.overlap = predictor, mesh, patching, overlap
        b, size, (H, W) = patching.boundary_pix, patching.patch_shape, mesh.shape
        self.stride = tuple(p - patching.overlap_pix - b for p in size)
        self.plans = [
            (
                _axis_plan(t.row0, t.row1, H, size[0], self.stride[0], b),
                _axis_plan(t.col0, t.col1, W, size[1], self.stride[1], b),
            )
            for t in mesh.tiles
        ]
        self.need = [self._region(py, px, "need") for py, px in self.plans]
        self.cover = [self._region(py, px, "cover") for py, px in self.plans]
        # Only ranks with border patches gather a halo region of x: what those patches read.
        self.halo = [self._border_reads(py, px) for py, px in self.plans]
        self.ny = math.ceil(H / self.stride[0])
        me = mesh.domain_rank
        self.frame = _bounding(mesh.tile, self.cover[me])  # where this rank accumulates
        self._chunk_cache: dict[int, tuple[list[_Chunk], list[_Chunk]]] = {}
        self._condition = None if condition is None else self._patch_condition(condition)

    def _patch_condition(self, condition: Tensor | TensorDict) -> Tensor | TensorDict:
        """Owned patches (P_local B, ...) of a condition tile, each key patched like x."""
        if isinstance(condition, TensorDict):
            out = {k: self.patch_fn(condition[k]) for k in condition.keys()}
            return TensorDict(out, batch_size=[self.patch_num * condition.batch_size[0]])
        return self.patch_fn(condition)

    @staticmethod
    def _region(py: AxisPlan | None, px: AxisPlan | None, kind: str) -> Tile | None:
        if py is None or px is None:
            return None
        (r0, r1), (c0, c1) = getattr(py, kind), getattr(px, kind)
        return Tile(r0, r1, c0, c1)

    def _border_reads(self, py: AxisPlan | None, px: AxisPlan | None) -> Tile | None:
        """Image rectangle read by a tile's border patches (those not interior along both
        axes); None without any. Along the 1-D split of a [1, n] or [n, 1] grid this is a
        strip about a patch wide, not the tile: the halo gather copies only that."""
        if py is None or px is None:
            return None
        (Hp, Wp), (sy, sx) = self.patching.patch_shape, self.stride
        y_out = [i for i in range(py.i0, py.i1) if not py.inner[0] <= i < py.inner[1]]
        x_out = [i for i in range(px.i0, px.i1) if not px.inner[0] <= i < px.inner[1]]
        if not y_out and not x_out:
            return None
        rows = range(py.i0, py.i1) if x_out else y_out  # rows of some border patch
        cols = range(px.i0, px.i1) if y_out else x_out
        r = torch.cat([py.index[(i - py.i0) * sy :][:Hp] for i in rows]) + py.need[0]
        c = torch.cat([px.index[(i - px.i0) * sx :][:Wp] for i in cols]) + px.need[0]
        return Tile(int(r.min()), int(r.max()) + 1, int(c.min()), int(c.max()) + 1)

    @property
    def patch_num(self) -> int:
        """Patches owned by this rank."""
        py, px = self.plans[self.mesh.domain_rank]
        return 0 if py is None or px is None else (py.i1 - py.i0) * (px.i1 - px.i0)

    def patch_fn(self, field: Tensor) -> Tensor:
        """Owned patches (P_local B, C, Hp, Wp) of a field given as this rank's tile
        (B, C, h, w), in the row order the guided score passes as ``slice_start`` (halo
        exchange inside: call it on every rank of the domain group)."""
        region = gather_region(field, self.mesh, self.need)
        (Hp, Wp), (sy, sx) = self.patching.patch_shape, self.stride
        py, px = self.plans[self.mesh.domain_rank]
        if py is None or px is None:
            return field.new_empty((0, field.shape[1], Hp, Wp))
        window = _Take.of(px.index)(_Take.of(py.index)(region, 2), 3)
        p = window.unfold(2, Hp, sy).unfold(3, Wp, sx)  # (B, C, n_y, n_x, Hp, Wp)
        return p.permute(3, 2, 0, 1, 4, 5).reshape(-1, field.shape[1], Hp, Wp)

    def _chunks(self, B: int) -> tuple[list[_Chunk], list[_Chunk]]:
        """(interior, border) runs of at most chunk_size // B patches of one grid column."""
        if B not in self._chunk_cache:
            py, px = self.plans[self.mesh.domain_rank]
            rows = self.predictor.chunk_size
            k = (py.i1 - py.i0) if rows is None else max(1, rows // B)
            interior, border = cast(list[_Chunk], []), cast(list[_Chunk], [])
            for ix in range(px.i0, px.i1):
                runs = [(py.i0, py.i1, border)]
                if px.inner[0] <= ix < px.inner[1]:
                    a0, a1 = py.inner
                    runs = [(py.i0, a0, border), (a0, a1, interior), (a1, py.i1, border)]
                for lo, hi, dest in runs:
                    dest += [self._chunk(ix, s, min(s + k, hi), dest is interior)
                             for s in range(lo, hi, k)]  # fmt: skip
            self._chunk_cache[B] = (interior, border)
        return self._chunk_cache[B]

    def _chunk(self, ix: int, iy0: int, iy1: int, interior: bool) -> _Chunk:
        """Patches iy0 <= iy < iy1 of column ix and what their reflect-padded window reads: in
        the tile (interior) or the halo region (border), and in the image."""
        py, px = self.plans[self.mesh.domain_rank]
        (Hp, Wp), (sy, sx) = self.patching.patch_shape, self.stride
        rows = py.index[(iy0 - py.i0) * sy : (iy1 - 1 - py.i0) * sy + Hp] + py.need[0]
        cols = px.index[(ix - px.i0) * sx : (ix - px.i0) * sx + Wp] + px.need[0]
        halo = self.halo[self.mesh.domain_rank]
        origin = self.mesh.tile.origin if interior else (halo.row0, halo.col0)
        src = (_Take.of(rows - origin[0]), _Take.of(cols - origin[1]))
        return _Chunk(ix, iy0, iy1, src, (rows, cols))

    def _extract(self, source: Tensor, takes: tuple[_Take, _Take], n: int) -> Tensor:
        """The n patches (n B, C, Hp, Wp) of a column run from ``source`` (B, C, ., .)."""
        Hp, Wp = self.patching.patch_shape
        col = takes[1](takes[0](source, 2), 3)  # (B, C, L, Wp): a view unless it reflects
        col = col.unfold(2, Hp, self.stride[0]).permute(2, 0, 1, 4, 3)  # (n, B, C, Hp, Wp)
        return col.reshape(n * source.shape[0], source.shape[1], Hp, Wp)

    def _run(self, acc: Tensor, t: Tensor, source: Tensor, chunks: list[_Chunk],
             term: Term) -> None:  # fmt: skip
        """Fuse ``term`` of the patch runs ``chunks`` read from ``source`` into ``acc``."""
        B, pe = source.shape[0], self.predictor.has_pos_embd
        py, px = self.plans[self.mesh.domain_rank]
        for c in chunks:
            n = c.iy1 - c.iy0
            with nvtx.range("patch.extract"):
                x_rows = self._extract(source, c.src, n)
                pe_rows = None
                if pe:  # the embedding where the run's windows read (never the global one)
                    window = self.predictor.positional_embedding_at(*c.image).unsqueeze(0)
                    whole = tuple(_Take(0, size, None) for size in window.shape[-2:])
                    pe_rows = self._extract(window.to(source.device), whole, n)
                    pe_rows = pe_rows.repeat_interleave(B, dim=0)  # row p B + b: patch p
            start = (c.ix * self.ny + c.iy0) * B  # rows p B + b of the global patched tensor
            local = ((c.ix - px.i0) * (py.i1 - py.i0) + c.iy0 - py.i0) * B
            out = term(Rows(x_rows, t.repeat(n), start, local, B, pe_rows))
            with nvtx.range("patch.fuse"):
                self.patching.accumulate(acc, out, start, self.frame.origin)

    def fused(self, x: Tensor, t: Tensor, term: Term) -> Tensor:
        """Tile (B, C, h, w) of the fuse of ``term`` over all patches of the global state."""
        mesh = self.mesh
        if tuple(x.shape[-2:]) != mesh.tile.shape:
            raise ValueError(f"x must cover tile {mesh.tile}, got shape {tuple(x.shape)}")
        if self._condition is not None and self._condition.shape[0] != self.patch_num * len(x):
            raise ValueError(
                f"the condition tile has batch size {self._condition.shape[0] // self.patch_num}"
                f" but x has batch size {len(x)}"
            )
        with nvtx.range("sample.denoise"):
            pending = start_gather(x, mesh, self.halo)
            if not self.overlap:
                pending.wait()
            acc = x.new_zeros((*x.shape[:2], *self.frame.shape), dtype=accum_dtype(x.dtype))
            interior, border = self._chunks(len(x)) if self.patch_num else ([], [])
            self._run(acc, t, x, interior, term)  # reads inside the tile: no halo needed
            region = pending.wait()
            self._run(acc, t, region, border, term)
            return reduce_regions(acc, self.frame, mesh, self.cover)

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        """Tile (B, C, h, w) of the fused x0 prediction for this rank's tile ``x``."""
        return self.fused(x, t, self.predict)

    def predict(self, rows: Rows) -> Tensor:
        """x0_hat (K, C, Hp, Wp) of a run of owned patch rows."""
        cond = None
        if self._condition is not None:
            cond = self._condition[rows.local : rows.local + rows.x.shape[0]]
        with nvtx.range("model.forward"):
            return self.predictor.predict_rows(
                rows.x, rows.t, rows.start, rows.B, rows.pos_embd, cond
            )


class TiledMultiDiffusionDPSScorePredictor:
    """Guided score on this rank's tile (B, C, h, w), the tile of
    ``MultiDiffusionDPSScorePredictor(x, t)`` (DPS, Chung et al. 2023): per owned patch,
    x0_to_score_fn(x0_hat, x, t) + sum_i g_i(x, t, x0_hat), fused over patches.

    Parameters
    ----------
    tiled : TiledMultiDiffusionPredictor
    x0_to_score_fn : callable
        ``(x0_hat, x, t) -> score`` on patch rows, e.g. ``scheduler.x0_to_score``.
    guidances : MultiDiffusionDPSGuidance or sequence of them
        Patch-local guidances (e.g. ``MultiDiffusionDataConsistencyDPSGuidance``) built with
        ``tiled`` as their predictor and this rank's tiles of y / mask: ``tiled.patch_fn``
        patches the observations with a halo exchange, so build them on every rank of the
        domain group in the same order. They receive the owned patches' local row offset
        as ``slice_start``.
    """

    def __init__(
        self,
        tiled: TiledMultiDiffusionPredictor,
        x0_to_score_fn: Callable[[Tensor, Tensor, Tensor], Tensor],
        guidances: Any | Sequence[Any],
    ) -> None:
        if not isinstance(tiled, TiledMultiDiffusionPredictor):
            raise TypeError(f"tiled must be a TiledMultiDiffusionPredictor, got {type(tiled)}")
        self.tiled, self.x0_to_score_fn = tiled, x0_to_score_fn
        many = isinstance(guidances, Sequence) and not isinstance(guidances, str)
        self.guidances = list(guidances) if many else [guidances]

    def _term(self, rows: Rows) -> Tensor:
        """x0_to_score_fn(x0_hat, x, t) + sum_i g_i(x, t, x0_hat) on a run of patch rows."""
        with torch.enable_grad():
            x_rows = rows.x.detach().requires_grad_(True)
            x0 = self.tiled.predict(rows._replace(x=x_rows))
            g = torch.zeros_like(x0)
            with nvtx.range("sample.guidance"):
                for guidance in self.guidances:
                    g = g + guidance(x_rows, rows.t, x0, slice_start=rows.local)
        return (self.x0_to_score_fn(x0.detach(), rows.x, rows.t) + g).detach()

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        """Guided score on this rank's tile ``x`` (B, C, h, w) at times ``t`` (B,)."""
        if torch.is_inference_mode_enabled():
            raise RuntimeError(
                "TiledMultiDiffusionDPSScorePredictor differentiates through the x0-predictor, "
                "but torch.inference_mode is enabled; run sampling under 'torch.no_grad()'"
            )
        return self.tiled.fused(x, t, self._term)
