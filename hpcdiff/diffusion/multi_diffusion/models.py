"""MultiDiffusionModel2D: run a diffusion model on patches of a large 2-D state (Bar-Tal et al.
2023, MultiDiffusion), with patched / interpolated / repeated conditions and positional
embeddings of the patches' global positions."""

from __future__ import annotations

import warnings
from collections import defaultdict
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from tensordict import TensorDict

from hpcdiff.core import Module
from hpcdiff.diffusion.multi_diffusion.patching import GridPatching2D, RandomPatching2D

Tensor = torch.Tensor
_NO_PATCHING = "No patching strategy set. Call set_random_patching() or set_grid_patching() first."


def linear_embedding(H: int, W: int) -> Tensor:
    """(2, H, W) grid over [-1, 1]^2: channel 0 is y, channel 1 is x."""
    gx, gy = np.meshgrid(np.linspace(-1, 1, W), np.linspace(-1, 1, H))
    return torch.from_numpy(np.stack([gy, gx], axis=0)).float()


def sinusoidal_embedding(
    H: int,
    W: int,
    channels: int,
    rows: Tensor | None = None,
    cols: Tensor | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """(C, H, W) Fourier features of (y, x) in [0, 2 pi]: for frequencies f = 2^k,
    k < C / 4, the channels sin(f x), sin(f y), cos(f x), cos(f y).

    ``rows`` (..., h) and ``cols`` (..., w), integer indices into the H x W grid, select a
    window instead: (..., C, h, w), with the same values as indexing the full embedding (each
    channel depends on one axis, so only the 1D features are computed, in float64).

    >>> full = sinusoidal_embedding(6, 5, 8)
    >>> rows, cols = torch.tensor([[1, 2], [4, 5]]), torch.tensor([[0, 1, 2], [2, 3, 4]])
    >>> win = sinusoidal_embedding(6, 5, 8, rows, cols)  # (2, 8, 2, 3): two windows
    >>> torch.equal(win[1], full[:, 4:6, 2:5])
    True
    """
    y, x = np.linspace(0, 2 * np.pi, H), np.linspace(0, 2 * np.pi, W)
    y = y if rows is None else y[np.asarray(rows.cpu())]
    x = x if cols is None else x[np.asarray(cols.cpu())]
    out = torch.empty((*y.shape[:-1], channels, y.shape[-1], x.shape[-1]), device=device)
    c = 0
    for f in 2.0 ** np.arange(channels // 4):
        for fn in (np.sin, np.cos):
            out[..., c, :, :] = torch.from_numpy(fn(f * x).astype(np.float32))[..., None, :]
            out[..., c + 1, :, :] = torch.from_numpy(fn(f * y).astype(np.float32))[..., :, None]
            c += 2
    return out


def _flags(value: bool | dict[str, bool], name: str) -> defaultdict[str, bool]:
    """Per-key condition flags: a bool applies to every key, a dict defaults to False."""
    if isinstance(value, bool):
        return defaultdict(lambda: value)
    if isinstance(value, dict):
        return defaultdict(lambda: False, value)
    raise TypeError(f"{name} must be bool or Dict[str, bool], got {type(value).__name__}.")


class MultiDiffusionModel2D(Module):
    """Wrap a diffusion model so that it runs on patches of a global (B, C, H, W) state.

    The state is patched to (P B, C, Hp, Wp) (random patches for training, a fused grid for
    sampling), ``t`` is repeated per patch, each condition tensor is patched
    (``condition_patch``), resized bilinearly to the patch and repeated (``condition_interp``)
    or just repeated (default), and, if ``positional_embedding`` is set, the patches of a
    global embedding are added to the condition under the key ``"positional_embedding"``.

    Parameters
    ----------
    model : Module
        Backbone ``model(x, t, condition=None, **kw)`` on patches.
    global_spatial_shape : tuple of int
        Global (H, W).
    positional_embedding : {"learnable", "sinusoidal", "linear"} or None
        Trainable (C, H, W) parameter, fixed Fourier features (C multiple of 4), the (y, x)
        grid over [-1, 1]^2 (C = 2), or none.
    channels_positional_embedding : int, default 4
    condition_patch, condition_interp : bool or dict of str to bool
        Condition strategy, globally or per TensorDict key; not both for one key.

    Examples
    --------
    >>> # Net: any DiffusionModel; here a 1x1 convolution (defined in conftest.py)
    >>> md = MultiDiffusionModel2D(Net(), global_spatial_shape=(16, 16))
    >>> md.set_random_patching(patch_shape=(8, 8), patch_num=6)
    >>> md(torch.randn(2, 3, 16, 16), torch.ones(2)).shape
    torch.Size([12, 3, 8, 8])
    >>> md.set_grid_patching(patch_shape=(8, 8), overlap_pix=2)
    >>> md(torch.randn(2, 3, 16, 16), torch.ones(2)).shape
    torch.Size([2, 3, 16, 16])
    """

    _patch_shape: Tensor

    def __init__(
        self,
        model: Module,
        global_spatial_shape: tuple[int, int],
        positional_embedding: Literal["learnable", "sinusoidal", "linear"] | None = None,
        channels_positional_embedding: int = 4,
        condition_patch: bool | dict[str, bool] = False,
        condition_interp: bool | dict[str, bool] = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.global_spatial_shape = tuple(global_spatial_shape)
        self._patching: RandomPatching2D | GridPatching2D | None = None
        self._fuse = False
        self._skip_positional_embedding_injection = False
        # Saved with checkpoints so that a predictor can reuse the training patch shape.
        self.register_buffer("_patch_shape", torch.zeros(2, dtype=torch.long), persistent=True)
        self._condition_patch = _flags(condition_patch, "condition_patch")
        self._condition_interp = _flags(condition_interp, "condition_interp")
        self._condition_has_per_key_flags = isinstance(condition_patch, dict) or isinstance(
            condition_interp, dict
        )
        self.pos_embd_kind = positional_embedding
        if positional_embedding is None:
            self.pos_embd: Tensor | None = None
        else:
            self._init_positional_embedding(positional_embedding, channels_positional_embedding)

    def __getattr__(self, name: str) -> Any:
        lazy = name == "pos_embd" and "_sinusoidal_channels" in self.__dict__
        if lazy and "pos_embd" not in self.__dict__["_buffers"]:
            # The full sinusoidal embedding, built on first use (single-device paths) on the
            # module's device and kept as a non-persistent buffer, as the reference keeps it.
            # Assigned to _buffers directly: register_buffer's hasattr check would recurse.
            H, W = self.global_spatial_shape
            pe = sinusoidal_embedding(H, W, self._sinusoidal_channels,
                                      device=self._patch_shape.device)  # fmt: skip
            self._buffers["pos_embd"] = pe
            self._non_persistent_buffers_set.add("pos_embd")
            return pe
        return super().__getattr__(name)

    @property
    def has_pos_embd(self) -> bool:
        """Whether a positional embedding is injected (without building a lazy one)."""
        return self.pos_embd_kind is not None

    def positional_embedding_at(self, rows: Tensor, cols: Tensor) -> Tensor:
        """The positional embedding (..., C_PE, h, w) at global ``rows`` (..., h) x ``cols``
        (..., w) (integer indices into the global grid). The sinusoidal one is computed from
        its closed form, so no rank holds it on the global grid."""
        if not self.has_pos_embd:
            raise RuntimeError("this model has no positional embedding")
        if "_sinusoidal_channels" in self.__dict__ and "pos_embd" not in self._buffers:
            H, W = self.global_spatial_shape
            return sinusoidal_embedding(H, W, self._sinusoidal_channels, rows, cols,
                                        device=self._patch_shape.device)  # fmt: skip
        pe = self.pos_embd
        rows, cols = rows.to(pe.device), cols.to(pe.device)
        return pe[:, rows[..., :, None], cols[..., None, :]].movedim(0, -3)

    def _init_positional_embedding(self, kind: str, C: int) -> None:
        H, W = self.global_spatial_shape
        if kind == "learnable":
            self.pos_embd = torch.nn.Parameter(torch.randn(C, H, W))
        elif kind == "linear":
            if C != 2:
                raise ValueError(
                    f"channels_positional_embedding must be 2 for 'linear' positional "
                    f"embedding, got {C}."
                )
            self.register_buffer("pos_embd", linear_embedding(H, W))
        elif kind == "sinusoidal":
            if C % 4 != 0:
                raise ValueError(
                    f"channels_positional_embedding must be a multiple of 4 for 'sinusoidal' "
                    f"positional embedding, got {C}."
                )
            # No global buffer now: windows are computed from the closed form
            # (positional_embedding_at); ``pos_embd`` is built on first access (__getattr__).
            self._sinusoidal_channels = C
        else:
            raise ValueError(
                "positional_embedding must be 'learnable', 'sinusoidal', 'linear', or None, "
                f"got '{kind}'."
            )

    @property
    def condition_patch(self) -> defaultdict[str, bool]:
        """Per-key flags: condition tensors decomposed into patches like ``x``."""
        return self._condition_patch

    @property
    def condition_interp(self) -> defaultdict[str, bool]:
        """Per-key flags: condition tensors resized to the patch and repeated."""
        return self._condition_interp

    @property
    def patch_shape(self) -> tuple[int, int] | None:
        """Patch (Hp, Wp) of the active strategy, else the saved one, else None."""
        if self._patching is not None:
            return self._patching.patch_shape
        ps = self._patch_shape.tolist()
        return (ps[0], ps[1]) if ps[0] > 0 or ps[1] > 0 else None

    # -- patching strategy ------------------------------------------------------------------
    def _set_patching(self, patching: RandomPatching2D | GridPatching2D, fuse: bool) -> None:
        self._patching = patching.to(self._patch_shape.device)
        self._fuse = fuse
        self._patch_shape.copy_(torch.tensor(patching.patch_shape))

    def set_random_patching(self, patch_shape: tuple[int, int], patch_num: int) -> None:
        """Train on ``patch_num`` random patches per sample (redrawn by
        :meth:`reset_patch_indices`); outputs are never fused."""
        patching = RandomPatching2D(self.global_spatial_shape, patch_shape, patch_num)
        self._set_patching(patching, fuse=False)

    def reset_patch_indices(self, generator: torch.Generator | None = None) -> None:
        """Redraw the random patch positions (RuntimeError without random patching)."""
        if not isinstance(self._patching, RandomPatching2D):
            raise RuntimeError(
                "reset_patch_indices() is only available when random patching is active. "
                "Call set_random_patching() first."
            )
        self._patching.reset_patch_indices(generator=generator)

    def set_patch_indices(self, indices: Tensor) -> None:
        """Place the random patches at the corners ``indices`` (P, 2) of the global grid
        (hpcdiff extension; RuntimeError without random patching)."""
        if not isinstance(self._patching, RandomPatching2D):
            raise RuntimeError(
                "set_patch_indices() is only available when random patching is active. "
                "Call set_random_patching() first."
            )
        self._patching.set_patch_indices(indices)

    def set_grid_patching(
        self,
        patch_shape: tuple[int, int],
        overlap_pix: int = 0,
        boundary_pix: int = 0,
        fuse: bool = True,
        window: Literal["uniform", "cosine"] = "uniform",
    ) -> None:
        """Tile the domain with a grid of patches; with ``fuse`` the outputs are fused back to
        (B, C, H, W) (``window`` as in :class:`GridPatching2D`)."""
        patching = GridPatching2D(
            self.global_spatial_shape, patch_shape, overlap_pix, boundary_pix, window=window
        )
        self._set_patching(patching, fuse=fuse)

    def _active_patching(self) -> RandomPatching2D | GridPatching2D:
        if self._patching is None:
            raise RuntimeError(_NO_PATCHING)
        return self._patching

    # -- conversions to the patched layout ------------------------------------------------------
    def patch_x(self, x: Tensor) -> Tensor:
        """Patches (P B, C, Hp, Wp) of a global tensor ``x`` (B, C, H, W)."""
        patching = self._active_patching()
        if not torch.compiler.is_compiling():
            if x.ndim != 4:
                raise ValueError(f"patch_x expects a 4D tensor (B, C, H, W), got {x.ndim}D.")
            if tuple(x.shape[2:]) != self.global_spatial_shape:
                raise ValueError(
                    f"Spatial dimensions {tuple(x.shape[2:])} do not match "
                    f"global_spatial_shape {self.global_spatial_shape}."
                )
        return patching.apply(x)

    def patch_t(self, t: Tensor) -> Tensor:
        """Diffusion time (B,) repeated for each patch: (P B,)."""
        return t.repeat(self._active_patching().patch_num)

    def patch_condition(self, condition: Tensor | TensorDict | None) -> Tensor | TensorDict | None:
        """Condition at batch size B converted to batch size P B by each key's strategy
        (positional embeddings are added by :meth:`forward`, not here)."""
        P = self._active_patching().patch_num
        if condition is None:
            return None
        if isinstance(condition, Tensor):
            if self._condition_has_per_key_flags:
                raise ValueError(
                    "condition_patch and condition_interp must be bool (not dict) when "
                    "condition is a plain Tensor. Use a TensorDict for per-key control."
                )
            return self._process_condition_tensor(
                condition, self._condition_patch[""], self._condition_interp[""], P, ""
            )
        if isinstance(condition, TensorDict):
            if not torch.compiler.is_compiling():
                keys = set(condition.keys())
                for name, flags in (
                    ("condition_patch", self._condition_patch),
                    ("condition_interp", self._condition_interp),
                ):
                    extra = set(flags) - keys
                    if extra:
                        raise ValueError(
                            f"{name} has keys {extra} not present in condition. "
                            f"Available keys: {keys}."
                        )
            out = {
                key: self._process_condition_tensor(
                    condition[key], self._condition_patch[key], self._condition_interp[key], P, key
                )
                for key in condition.keys()
            }
            return TensorDict(out, batch_size=[P * condition.batch_size[0]])
        raise TypeError(
            f"condition must be Tensor, TensorDict, or None, got {type(condition).__name__}."
        )

    def _process_condition_tensor(
        self, tensor: Tensor, do_patch: bool, do_interp: bool, P: int, key: str
    ) -> Tensor:
        """Patch, resize-and-repeat, or repeat one condition tensor (B, ...) -> (P B, ...)."""
        if do_patch and do_interp:
            raise ValueError(
                "condition_patch and condition_interp cannot both be True for the same "
                f"condition key{f' {key!r}' if key else ''}. Use one or the other."
            )
        if not (do_patch or do_interp):
            return tensor.repeat(P, *([1] * (tensor.ndim - 1)))
        if tensor.ndim != 4:
            raise ValueError(
                f"condition_patch={do_patch} or condition_interp={do_interp} requires a 4D "
                f"tensor (B, C, H, W), got {tensor.ndim}D."
            )
        patching = self._active_patching()
        if do_patch:
            if not torch.compiler.is_compiling() and tuple(tensor.shape[2:]) != (
                self.global_spatial_shape
            ):
                raise ValueError(
                    f"condition_patch=True{f' for key {key!r}' if key else ''} requires "
                    f"spatial dims {tuple(tensor.shape[2:])} to match global_spatial_shape "
                    f"{self.global_spatial_shape}."
                )
            return patching.apply(tensor)
        resized = F.interpolate(tensor, size=patching.patch_shape, mode="bilinear")
        return resized.repeat(P, 1, 1, 1)

    def fuse(self, input: Tensor, batch_size: int) -> Tensor:
        """Fuse grid patches (P B, C, Hp, Wp) to (B, C, H, W) (RuntimeError without grid)."""
        if not isinstance(self._patching, GridPatching2D):
            raise RuntimeError(
                "Fusing is only supported with grid patching. Call set_grid_patching() first."
            )
        return self._patching.fuse(input, batch_size=batch_size)

    def _patched_pos_embd(self, batch_size: int) -> Tensor:
        """Patches of the positional embedding for every sample: (P B, C_PE, Hp, Wp)."""
        patching = self._active_patching()
        if isinstance(patching, RandomPatching2D):  # patches inside the grid: index it
            (Hp, Wp), corners = patching.patch_shape, patching.patch_indices
            rows = corners[:, :1] + torch.arange(Hp, device=corners.device)  # (P, Hp)
            cols = corners[:, 1:] + torch.arange(Wp, device=corners.device)  # (P, Wp)
            pe = self.positional_embedding_at(rows, cols)
        else:  # grid patches reach into the reflect-padded boundary
            pe = patching.apply(self.pos_embd.unsqueeze(0))  # (P, C_PE, Hp, Wp)
        return pe.repeat_interleave(batch_size, dim=0)  # row p B + b holds patch p

    def _inject_patched_pos_embd(
        self, condition: Tensor | TensorDict | None, pos_embd_patched: Tensor, PB: int
    ) -> TensorDict:
        """Condition with ``"positional_embedding"`` added (a Tensor goes under "condition")."""
        if condition is None:
            return TensorDict({"positional_embedding": pos_embd_patched}, batch_size=[PB])
        if isinstance(condition, TensorDict):
            condition["positional_embedding"] = pos_embd_patched
            return condition
        if isinstance(condition, Tensor):
            return TensorDict(
                {"condition": condition, "positional_embedding": pos_embd_patched},
                batch_size=[PB],
            )
        raise ValueError(
            "When positional embeddings are configured, condition must be a Tensor, "
            f"TensorDict, or None, got {type(condition).__name__}."
        )

    # -- forward ------------------------------------------------------------------------------
    def forward(
        self,
        x: Tensor,
        t: Tensor,
        condition: Tensor | TensorDict | None = None,
        x_is_patched: bool = False,
        t_is_patched: bool = False,
        condition_is_patched: bool = False,
        **model_kwargs: Any,
    ) -> Tensor:
        """Model output on the patches (P B, C, Hp, Wp), fused to (B, C, H, W) when grid
        patching was set with ``fuse=True``; ``*_is_patched`` skip the conversions."""
        use_pe = self.has_pos_embd and not self._skip_positional_embedding_injection
        patching = self._patching
        if patching is None:
            if not torch.compiler.is_compiling():
                warnings.warn(
                    "No patching strategy set on MultiDiffusionModel2D. The model will run "
                    "without patching.",
                    stacklevel=2,
                )
            if use_pe:
                B = x.shape[0]
                pe = self.pos_embd.unsqueeze(0).expand(B, -1, -1, -1).contiguous()
                condition = self._inject_patched_pos_embd(condition, pe, B)
            return self.model(x, t, condition=condition, **model_kwargs)

        P = patching.patch_num
        # B is needed only to inject embeddings and to fuse; partial chunks skip both.
        if x_is_patched:
            needs_b = use_pe or self._fuse
            if needs_b and not torch.compiler.is_compiling() and x.shape[0] % P != 0:
                raise ValueError(
                    f"x_is_patched=True but x batch dim ({x.shape[0]}) is not divisible by "
                    f"patch_num ({P})."
                )
            B = x.shape[0] // P
        else:
            B = x.shape[0]
            x = self.patch_x(x)
        if not t_is_patched:
            t = self.patch_t(t)
        if not condition_is_patched:
            condition = self.patch_condition(condition)
        if use_pe:
            condition = self._inject_patched_pos_embd(condition, self._patched_pos_embd(B), P * B)
        output = self.model(x, t, condition=condition, **model_kwargs)
        if self._fuse:
            output = patching.fuse(output, batch_size=B)
        return output
