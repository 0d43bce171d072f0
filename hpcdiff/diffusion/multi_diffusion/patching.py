"""Patching of 2-D fields for multi-diffusion (Bar-Tal et al. 2023): random patches for
training, an overlapping grid of patches fused back by (window-)weighted averaging for sampling.

Patched tensors have shape (P B, C, Hp, Wp) with row p B + b holding patch p of sample b.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

from hpcdiff.diffusion.multi_diffusion import _grid, _kernels

Tensor = torch.Tensor


def _is_module_fn(input: object) -> bool:
    """True for ``nn.Module.apply(fn)`` calls (``apply`` is overridden here with the patching
    meaning; frameworks such as DeepSpeed call ``module.apply(fn)`` on every submodule)."""
    return callable(input) and not isinstance(input, (Tensor, torch.nn.Module))


class BasePatching2D(torch.nn.Module, ABC):
    """Common base of 2-D patching strategies: checks shapes and crops the patch to the image.

    Parameters
    ----------
    img_shape : tuple of int
        Image size (H, W).
    patch_shape : tuple of int
        Patch size (Hp, Wp); a side larger than the image is cropped to it (with a warning).
    """

    def __init__(self, img_shape: tuple[int, int], patch_shape: tuple[int, int]) -> None:
        super().__init__()
        if len(img_shape) != 2:
            raise ValueError(f"img_shape must be 2D, got {len(img_shape)}D")
        if len(patch_shape) != 2:
            raise ValueError(f"patch_shape must be 2D, got {len(patch_shape)}D")
        if any(p > i for p, i in zip(patch_shape, img_shape)):
            warnings.warn(
                f"Patch shape {tuple(patch_shape)} is larger than image shape "
                f"{tuple(img_shape)}; patches are cropped to fit within the image.",
                stacklevel=2,
            )
        self.img_shape = tuple(int(i) for i in img_shape)
        self.patch_shape = tuple(min(int(p), i) for p, i in zip(patch_shape, self.img_shape))

    def forward(self, input: Tensor, **kwargs) -> Tensor:
        """Same as :meth:`apply`."""
        return self.apply(input, **kwargs)

    @abstractmethod
    # PhysicsNeMo's signature (not nn.Module's / the base class's)
    def apply(self, input: Tensor, *args, **kwargs) -> Tensor:  # type: ignore[override]
        """Patch a batch of images (B, C, H, W) into (P B, C, Hp, Wp)."""

    def fuse(self, input: Tensor, **kwargs) -> Tensor:
        """Fuse patches back into images; only strategies with a fixed layout implement it."""
        raise NotImplementedError(f"{type(self).__name__} does not implement 'fuse'")

    def global_index(self, batch_size: int = 1, device: torch.device | str = "cpu") -> Tensor:
        """Image coordinates (P, 2, Hp, Wp) (channel 0: y, 1: x) of every patch pixel, as a new
        tensor; ``batch_size`` and ``device`` are accepted for compatibility and ignored."""
        return self._compute_global_index().clone()

    @abstractmethod
    def _compute_global_index(self) -> Tensor:
        """Image coordinates (P, 2, Hp, Wp) of the current patches (long)."""

    def _check_input(self, input: object) -> None:
        if not isinstance(input, Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
        if input.ndim != 4:
            raise ValueError(f"input must be 4D (B, C, H, W), got shape {tuple(input.shape)}")

    def _with_additional(self, out: Tensor, additional_input: Tensor | None, P: int) -> Tensor:
        """Concatenate ``additional_input`` (B, C_add, H', W'), resized bilinearly to the patch
        size and repeated for each of the P patches, to the patches' channels."""
        if additional_input is None:
            return out
        interp = F.interpolate(additional_input, size=self.patch_shape, mode="bilinear")
        return torch.cat((out, interp.repeat(P, 1, 1, 1)), dim=1)  # (P B, C + C_add, Hp, Wp)


class RandomPatching2D(BasePatching2D):
    """Patches at P random positions, the same positions for every sample of the batch.

    Positions are drawn at construction and redrawn by :meth:`reset_patch_indices`; they are
    held in the buffer ``patch_indices`` (P, 2) of upper-left corners (y, x).

    >>> rp = RandomPatching2D(img_shape=(16, 16), patch_shape=(8, 8), patch_num=6)
    >>> rp.apply(torch.randn(2, 3, 16, 16)).shape
    torch.Size([12, 3, 8, 8])
    >>> rp.global_index().shape
    torch.Size([6, 2, 8, 8])
    """

    patch_indices: Tensor

    def __init__(
        self, img_shape: tuple[int, int], patch_shape: tuple[int, int], patch_num: int
    ) -> None:
        super().__init__(img_shape, patch_shape)
        self._check_patch_num(patch_num)
        self._patch_num = int(patch_num)
        self.reset_patch_indices()

    @staticmethod
    def _check_patch_num(value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"patch_num must be a positive int, got {value!r}")

    @property
    def patch_num(self) -> int:
        """Number of patches P per sample."""
        return self._patch_num

    def set_patch_num(self, value: int) -> None:
        """Change the number of patches and redraw all positions."""
        self._check_patch_num(value)
        self._patch_num = int(value)
        self.reset_patch_indices()

    def reset_patch_indices(self, *, generator: torch.Generator | None = None) -> None:
        """Redraw the corners uniformly: y in [0, H - Hp], then x in [0, W - Wp]."""
        old = getattr(self, "patch_indices", None)
        device = old.device if isinstance(old, Tensor) else None
        P = self.patch_num
        max_y, max_x = (i - p for i, p in zip(self.img_shape, self.patch_shape))
        py = torch.randint(0, max_y + 1, (P,), dtype=torch.long, device=device, generator=generator)
        px = torch.randint(0, max_x + 1, (P,), dtype=torch.long, device=device, generator=generator)
        indices = torch.stack([py, px], dim=1)  # (P, 2)
        if isinstance(old, Tensor) and old.shape == indices.shape:
            old.copy_(indices)
        else:
            self.register_buffer("patch_indices", indices, persistent=False)

    def set_patch_indices(self, indices: Tensor) -> None:
        """Use the given corners (P, 2) (y, x) instead of random ones; P may change (an
        hpcdiff extension: tiled training places patches at global positions it drew)."""
        if indices.ndim != 2 or indices.shape[1] != 2 or indices.shape[0] < 1:
            raise ValueError(f"indices must have shape (P, 2), got {tuple(indices.shape)}")
        if not torch.compiler.is_compiling():
            high = torch.tensor([i - p for i, p in zip(self.img_shape, self.patch_shape)])
            cpu = indices.detach().cpu()
            bad = (cpu < 0) | (cpu > high)
            if bad.any():
                row = int(bad.any(dim=1).nonzero()[0])
                raise ValueError(
                    f"patch corner {indices[row].tolist()} puts a {self.patch_shape} patch "
                    f"outside the image {self.img_shape}"
                )
        indices = indices.to(self.patch_indices.device, torch.long)
        if indices.shape == self.patch_indices.shape:
            self.patch_indices.copy_(indices)
        else:
            self.register_buffer("patch_indices", indices.clone(), persistent=False)
        self._patch_num = int(indices.shape[0])

    def _compute_global_index(self) -> Tensor:
        Hp, Wp = self.patch_shape
        dev = self.patch_indices.device
        y = self.patch_indices[:, 0, None] + torch.arange(Hp, device=dev)  # (P, Hp)
        x = self.patch_indices[:, 1, None] + torch.arange(Wp, device=dev)  # (P, Wp)
        return torch.stack(
            [y[:, :, None].expand(-1, Hp, Wp), x[:, None, :].expand(-1, Hp, Wp)], dim=1
        )

    # PhysicsNeMo's signature (not nn.Module's / the base class's)
    def forward(self, input: Tensor, additional_input: Tensor | None = None) -> Tensor:  # type: ignore[override]
        """Extract the patches (P B, C [+ C_add], Hp, Wp)."""
        self._check_input(input)
        indices = self.patch_indices.to(input.device)
        out = _kernels.extract_random(input, indices, self.patch_shape)
        if input.is_contiguous(memory_format=torch.channels_last):
            out = out.contiguous(memory_format=torch.channels_last)
        return self._with_additional(out, additional_input, self.patch_num)

    # PhysicsNeMo's signature (not nn.Module's / the base class's)
    def apply(self, input: Tensor, additional_input: Tensor | None = None) -> Tensor:  # type: ignore[override]
        """Patches (P B, C, Hp, Wp) of ``input`` (B, C, H, W); ``additional_input``
        (B, C_add, H', W') is resized to (Hp, Wp) and appended as channels to every patch."""
        if _is_module_fn(input):
            return torch.nn.Module.apply(self, input)
        self._check_input(input)
        return self(input, additional_input=additional_input)


class GridPatching2D(BasePatching2D):
    """Overlapping grid of patches covering the image, reflect-padded at the edges, and its
    inverse :meth:`fuse` (weighted average of the overlapping patches).

    With stride s = patch - overlap_pix - boundary_pix there are ceil(H / s_y) x ceil(W / s_x)
    patches, numbered x-major; see :mod:`hpcdiff.diffusion.multi_diffusion._grid` for the
    coordinates. ``window="uniform"`` (default) averages overlaps uniformly as the reference
    does; ``window="cosine"`` blends them with weights tapering towards each patch edge, which
    removes seams between patches that disagree.

    >>> gp = GridPatching2D(img_shape=(16, 16), patch_shape=(8, 8))
    >>> x = torch.randn(2, 3, 16, 16)
    >>> patches = gp.apply(x)
    >>> patches.shape
    torch.Size([8, 3, 8, 8])
    >>> torch.allclose(gp.fuse(patches, batch_size=2), x)
    True
    """

    def __init__(
        self,
        img_shape: tuple[int, int],
        patch_shape: tuple[int, int],
        overlap_pix: int = 0,
        boundary_pix: int = 0,
        window: Literal["uniform", "cosine"] = "uniform",
    ) -> None:
        super().__init__(img_shape, patch_shape)
        self.overlap_pix = int(overlap_pix)
        self.boundary_pix = int(boundary_pix)
        self.window = window
        _grid.check_boundary(self.patch_shape, self.overlap_pix, self.boundary_pix)
        self._geometry = self._geometry_for(self.img_shape)
        self.patch_num = self._geometry.patch_num

    def _geometry_for(self, img_shape: Sequence[int]) -> _grid.GridGeometry:
        if tuple(img_shape) == self.img_shape and hasattr(self, "_geometry"):
            return self._geometry
        return _grid.grid_geometry(
            tuple(img_shape), self.patch_shape, self.overlap_pix, self.boundary_pix, self.window
        )

    # -- geometry, exposed for tiled (domain-decomposed) fusing ---------------------------------
    @property
    def padded_shape(self) -> tuple[int, int]:
        """Shape (Hpad, Wpad) of the reflect-padded image the grid tiles."""
        return self._geometry.padded_shape

    @property
    def padding(self) -> tuple[int, int, int, int]:
        """Reflect padding (left, right, top, bottom), in ``F.pad`` order."""
        return self._geometry.pad

    def patch_origins(self) -> Tensor:
        """Upper-left corners (P, 2) (y, x) of the patches in padded coordinates (long)."""
        geom = self._geometry
        return torch.tensor([geom.patch_origin(p) for p in range(self.patch_num)])

    def window_weights(self) -> Tensor:
        """Blending window (Hp, Wp) applied to every patch when fusing (float32)."""
        geom = self._geometry
        return torch.outer(geom.window_1d(0), geom.window_1d(1)).float()

    def weight_map(self) -> Tensor:
        """Sum of the windows of all patches at each padded pixel (Hpad, Wpad) (float32): the
        fuse normalizer, equal to the overlap count for the uniform window."""
        return self._geometry.weight_map().float()

    def _compute_global_index(self) -> Tensor:
        cached = getattr(self, "_global_index", None)
        if isinstance(cached, Tensor):
            return cached
        geom, (Hp, Wp) = self._geometry, self.patch_shape
        (ny, nx), b = geom.num, self.boundary_pix
        coords = []
        for axis, size in ((0, Hp), (1, Wp)):
            L = self.img_shape[axis]
            q = torch.tensor(geom.origins(axis))[:, None] + torch.arange(size) - b  # (n, size)
            q = q.abs()
            coords.append(torch.where(q > L - 1, 2 * (L - 1) - q, q))  # reflect into [0, L)
        y = coords[0].repeat(nx, 1)  # patch p = ix n_y + iy has rows of iy = p % n_y
        x = coords[1].repeat_interleave(ny, dim=0)
        index = torch.stack(
            [y[:, :, None].expand(-1, Hp, Wp), x[:, None, :].expand(-1, Hp, Wp)], dim=1
        ).contiguous()
        self.register_buffer("_global_index", index, persistent=False)
        return index

    # -- patching and fusing -------------------------------------------------------------------
    # PhysicsNeMo's signature (not nn.Module's / the base class's)
    def forward(self, input: Tensor, additional_input: Tensor | None = None) -> Tensor:  # type: ignore[override]
        """Extract the grid patches (P B, C [+ C_add], Hp, Wp)."""
        self._check_input(input)
        geom = self._geometry_for(input.shape[-2:])
        out = _kernels.extract_grid(input, geom, 0, geom.patch_num * input.shape[0])
        return self._with_additional(out, additional_input, geom.patch_num)

    # PhysicsNeMo's signature (not nn.Module's / the base class's)
    def apply(self, input: Tensor, additional_input: Tensor | None = None) -> Tensor:  # type: ignore[override]
        """Grid patches (P B, C, Hp, Wp) of ``input`` (B, C, H, W): rows B i .. B (i + 1) hold
        patch i of every sample; ``additional_input`` (B, C_add, H', W') is resized to
        (Hp, Wp) and appended as channels to every patch."""
        if _is_module_fn(input):
            return torch.nn.Module.apply(self, input)
        self._check_input(input)
        return self(input, additional_input=additional_input)

    def apply_rows(self, input: Tensor, start: int, stop: int) -> Tensor:
        """Rows [start, stop) of ``apply(input)`` (stop - start, C, Hp, Wp), copying only those
        patches (differentiable)."""
        self._check_input(input)
        self._check_image(input)
        total = self.patch_num * input.shape[0]
        if not 0 <= start <= stop <= total:
            raise ValueError(f"rows [{start}, {stop}) out of range [0, {total}]")
        return _kernels.extract_grid(input, self._geometry, start, stop)

    # PhysicsNeMo's signature (not nn.Module's / the base class's)
    def fuse(self, input: Tensor, batch_size: int) -> Tensor:  # type: ignore[override]
        """Images (B, C, H, W) from patches (P B, C, Hp, Wp): each pixel is the window-weighted
        mean of the patches covering it (the plain mean for the uniform window). Accumulates
        in float32; half-precision and integer patches give float32 images."""
        return self.fuse_chunks([input], batch_size)

    def fuse_chunks(self, chunks: Sequence[Tensor], batch_size: int) -> Tensor:
        """:meth:`fuse` of the row-wise concatenation of ``chunks``, without concatenating."""
        rows = sum(c.shape[0] for c in chunks)
        for c in chunks:
            if c.ndim != 4 or tuple(c.shape[-2:]) != self.patch_shape:
                raise RuntimeError(
                    f"patches must have shape (N, C, {self.patch_shape[0]}, "
                    f"{self.patch_shape[1]}), got {tuple(c.shape)}"
                )
        if rows != self.patch_num * batch_size:
            raise RuntimeError(
                f"fuse expects patch_num * batch_size = {self.patch_num} * {batch_size} rows, "
                f"got {rows}"
            )
        return _kernels.fuse_grid(self._geometry, batch_size, *chunks)

    def accumulate(
        self, acc: Tensor, patches: Tensor, row_start: int, offset: tuple[int, int] = (0, 0)
    ) -> Tensor:
        """In place, add rows [row_start, row_start + len(patches)) of a patched tensor, each
        weighted by window / weight map, into ``acc`` (B, C, h, w): the tile of the fused image
        whose upper-left pixel is ``offset``. Summing these over all rows (over all tiles)
        gives :meth:`fuse`; accumulate in float32. Not differentiable."""
        with torch.no_grad():
            return _kernels.fuse_into(acc, patches, self._geometry, row_start, tuple(offset))

    def _check_image(self, input: Tensor) -> None:
        if tuple(input.shape[-2:]) != self.img_shape:
            raise ValueError(
                f"input spatial shape {tuple(input.shape[-2:])} does not match img_shape "
                f"{self.img_shape}"
            )

    @staticmethod
    def get_overlap_count(
        patch_shape: tuple[int, int],
        img_shape: tuple[int, int],
        overlap_pix: int,
        boundary_pix: int,
    ) -> Tensor:
        """Number of patches covering each pixel of the padded image, (1, 1, Hpad, Wpad)."""
        geom = _grid.grid_geometry(tuple(img_shape), tuple(patch_shape), overlap_pix, boundary_pix)
        return geom.weight_map().float()[None, None]


def image_batching(
    input: Tensor,
    patch_shape_y: int,
    patch_shape_x: int,
    overlap_pix: int,
    boundary_pix: int,
    input_interp: Tensor | None = None,
) -> Tensor:
    """Grid patches (P B, C [+ C_add], Hp, Wp) of ``input`` (B, C, H, W), reflect-padded; the
    pre-resized ``input_interp`` (B, C_add, Hp, Wp) is appended as channels to every patch."""
    B, _, H, W = input.shape
    patch_shape = (patch_shape_y, patch_shape_x)
    _grid.check_strides(patch_shape, overlap_pix, boundary_pix)
    if input_interp is not None:
        if input_interp.shape[0] != B:
            raise ValueError(
                f"input_interp batch size ({input_interp.shape[0]}) must match input batch "
                f"size ({B})"
            )
        if tuple(input_interp.shape[2:4]) != patch_shape:
            raise ValueError(
                f"input_interp patch shape {tuple(input_interp.shape[2:4])} must match the "
                f"patch shape {patch_shape}"
            )
    _grid.check_boundary(patch_shape, overlap_pix, boundary_pix)
    geom = _grid.grid_geometry((H, W), patch_shape, overlap_pix, boundary_pix)
    out = _kernels.extract_grid(input, geom, 0, geom.patch_num * B)
    if input_interp is None:
        return out
    return torch.cat((out, input_interp.repeat(geom.patch_num, 1, 1, 1)), dim=1)


def image_fuse(
    input: Tensor,
    img_shape_y: int,
    img_shape_x: int,
    batch_size: int,
    overlap_pix: int,
    boundary_pix: int,
    overlap_count: Tensor | None = None,
) -> Tensor:
    """Inverse of :func:`image_batching`: images (B, C, H, W) whose pixels are the mean of the
    patches (P B, C, Hp, Wp) covering them; a given ``overlap_count`` (1, 1, Hpad, Wpad)
    replaces the patch count as the divisor."""
    patch_shape = tuple(input.shape[2:4])
    geom = _grid.grid_geometry((img_shape_y, img_shape_x), patch_shape, overlap_pix, boundary_pix)
    if input.shape[0] != geom.patch_num * batch_size:
        raise RuntimeError(
            f"image_fuse expects {geom.patch_num} patches x batch_size {batch_size} = "
            f"{geom.patch_num * batch_size} rows, got {input.shape[0]}"
        )
    if overlap_count is None:
        return _kernels.fuse_grid(geom, batch_size, input)
    # Un-normalized sum, divided by the caller's count on the image region.
    acc = input.new_zeros(
        (batch_size, input.shape[1], img_shape_y, img_shape_x), dtype=_grid.accum_dtype(input.dtype)
    )
    acc = _kernels.fuse_into(acc, input, geom, 0, normalized=False)
    left, _, top, _ = geom.pad
    count = overlap_count.to(input.device)[..., top : top + img_shape_y, left : left + img_shape_x]
    return acc / count
