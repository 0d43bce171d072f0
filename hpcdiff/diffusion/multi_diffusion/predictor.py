"""MultiDiffusionPredictor: the x0-predictor of a trained MultiDiffusionModel2D on a global state,
denoising an overlapping grid of patches and fusing them (MultiDiffusion, Bar-Tal et al. 2023):
x0_hat(x, t) = Fuse_p[D(Extract_p(x), t)], Fuse the window-weighted mean over patches."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch
from tensordict import TensorDict
from torch.utils.checkpoint import checkpoint

from hpcdiff.diffusion.base import Predictor, PredictorType
from hpcdiff.diffusion.metrics.losses import _to_x0_fn
from hpcdiff.diffusion.multi_diffusion import _grid
from hpcdiff.diffusion.multi_diffusion.models import MultiDiffusionModel2D
from hpcdiff.diffusion.multi_diffusion.patching import GridPatching2D
from hpcdiff.diffusion.utils.utils import _unwrap_module

Tensor = torch.Tensor
ToX0Fn = Callable[[Tensor, Tensor, Tensor], Tensor]


class MultiDiffusionPredictor(Predictor):
    """Global x0-predictor ``(x, t) -> x0_hat`` (B, C, H, W) from a patch model, for
    ``scheduler.get_denoiser(x0_predictor=...)`` and ``sample``.

    Call :meth:`set_patching` first. ``chunk_size`` runs the model on at most that many patch
    rows at a time: only those patches are extracted, and without autograd they are fused
    straight into the output, so memory stays a few global states plus one chunk.
    ``use_checkpointing`` recomputes the model in the backward pass (for DPS guidance).

    Parameters
    ----------
    model : MultiDiffusionModel2D
        Trained patch model (may be wrapped by DDP / ``torch.compile``).
    condition : Tensor, TensorDict or None
        Global condition (B, ...), patched once per :meth:`set_patching`.
    fuse : bool, default True
        Return the fused (B, C, H, W) prediction, else the patches (P B, C, Hp, Wp).
    chunk_size : int or None
    use_checkpointing : bool, default False
    prediction_type, score_to_x0_fn, epsilon_to_x0_fn
        As for :class:`~hpcdiff.diffusion.metrics.MSEDSMLoss`: the model output is converted
        to x0.
    **model_kwargs
        Passed to the model at every call.

    >>> # Net: any DiffusionModel; here a 1x1 convolution (defined in conftest.py)
    >>> md = MultiDiffusionModel2D(Net(), global_spatial_shape=(16, 16))
    >>> md.set_random_patching(patch_shape=(8, 8), patch_num=4)
    >>> predictor = MultiDiffusionPredictor(md, chunk_size=3)
    >>> predictor.set_patching(overlap_pix=2, boundary_pix=1)
    >>> predictor(torch.randn(2, 3, 16, 16), torch.ones(2)).shape
    torch.Size([2, 3, 16, 16])
    """

    def __init__(
        self,
        model: MultiDiffusionModel2D,
        condition: Tensor | TensorDict | None = None,
        fuse: bool = True,
        chunk_size: int | None = None,
        use_checkpointing: bool = False,
        prediction_type: PredictorType = "x0",
        score_to_x0_fn: ToX0Fn | None = None,
        epsilon_to_x0_fn: ToX0Fn | None = None,
        **model_kwargs: Any,
    ) -> None:
        if chunk_size is not None and (
            isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
        ):
            raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
        self.model = model
        self._md_model = _unwrap_module(model, MultiDiffusionModel2D)
        self._model_kwargs = model_kwargs
        self._chunk_size = chunk_size
        self._use_checkpointing = use_checkpointing
        self._fuse = fuse
        self._cond_input = condition
        self._to_x0 = _to_x0_fn(prediction_type, score_to_x0_fn, epsilon_to_x0_fn)
        self._patch_shape: tuple[int, int] | None = self._md_model.patch_shape
        self._global_shape: tuple[int, int] = tuple(self._md_model.global_spatial_shape)
        self._patching: GridPatching2D | None = None
        self._P: int | None = None
        self._cond_patched: Tensor | TensorDict | None = None
        self._pos_embd_patched: Tensor | None = None
        # The predictor patches the embedding once and fuses itself; the model must do neither
        # (a stable model state also keeps checkpointed recomputation identical).
        self._md_model._skip_positional_embedding_injection = True
        self._md_model._fuse = False

    @property
    def fuse(self) -> bool:
        """Whether calls return the fused global prediction (else the patches)."""
        return self._fuse

    @fuse.setter
    def fuse(self, value: bool) -> None:
        self._fuse = value

    @property
    def patch_shape(self) -> tuple[int, int] | None:
        """Patch shape (Hp, Wp) of the wrapped model."""
        return self._md_model.patch_shape

    @property
    def patching(self) -> GridPatching2D | None:
        """The sampling grid set by :meth:`set_patching` (None before)."""
        return self._patching

    @property
    def patch_num(self) -> int | None:
        """Patches P of the sampling grid (None before :meth:`set_patching`)."""
        return self._P

    @property
    def has_pos_embd(self) -> bool:
        """Whether the wrapped model injects a positional embedding."""
        return self._md_model.has_pos_embd

    def positional_embedding_at(self, rows: Tensor, cols: Tensor) -> Tensor:
        """The wrapped model's positional embedding (..., C_PE, h, w) at global ``rows``
        (..., h) x ``cols`` (..., w), without the global embedding when it is sinusoidal."""
        return self._md_model.positional_embedding_at(rows, cols)

    @property
    def chunk_size(self) -> int | None:
        """Patch rows per model call (None: all at once)."""
        return self._chunk_size

    def set_patching(
        self,
        overlap_pix: int,
        boundary_pix: int,
        *,
        patch_shape: tuple[int, int] | None = None,
        global_shape: tuple[int, int] | None = None,
        window: Literal["uniform", "cosine"] = "uniform",
    ) -> None:
        """Configure the sampling grid (required before any call); ``patch_shape`` and
        ``global_shape`` default to the model's (overriding them warns); ``window`` selects
        the fuse weights (see :class:`GridPatching2D`)."""
        if patch_shape is not None:
            new = tuple(patch_shape)
            if self._patch_shape is not None and new != self._patch_shape:
                warnings.warn(
                    f"Overriding saved patch_shape {self._patch_shape} with {new}; patching "
                    "that differs from training may give unexpected results.",
                    stacklevel=2,
                )
            self._patch_shape = new
        if global_shape is not None and tuple(global_shape) != self._global_shape:
            warnings.warn(
                f"Overriding saved global_spatial_shape {self._global_shape} with "
                f"{tuple(global_shape)}; positional embeddings built for the old shape no "
                "longer match.",
                stacklevel=2,
            )
            self._global_shape = tuple(global_shape)
        if self._patch_shape is None:
            raise RuntimeError(
                "patch_shape is not available on the wrapped model and was not provided. "
                "Pass patch_shape=(Hp, Wp) explicitly."
            )
        md = self._md_model
        md.global_spatial_shape = self._global_shape
        md.set_grid_patching(
            self._patch_shape, overlap_pix, boundary_pix, fuse=False, window=window
        )
        self._patching = md._patching
        self._P = self._patching.patch_num
        self._cond_patched = md.patch_condition(self._cond_input)
        self._pos_embd_patched = None  # see _pos_embd_rows

    def _check_patching_set(self) -> None:
        if not torch.compiler.is_compiling() and self._patching is None:
            raise RuntimeError(
                "Grid patching is not configured. Call set_patching(overlap_pix, boundary_pix, "
                "...) before any other method."
            )

    def patch_fn(self, x: Tensor) -> Tensor:
        """Patches (P B, C, Hp, Wp) of a global tensor (B, C, H, W) on the sampling grid."""
        self._check_patching_set()
        return self._md_model.patch_x(x)

    def fuse_fn(self, patched: Tensor) -> Tensor:
        """Fuse a complete patched tensor (P B, C, Hp, Wp) to (B, C, H, W)."""
        self._check_patching_set()
        P = self._P
        if not torch.compiler.is_compiling() and patched.shape[0] % P != 0:
            raise ValueError(
                f"patched.shape[0] ({patched.shape[0]}) is not divisible by patch_num ({P}); "
                "fuse_fn requires the full (P*B, ...) tensor."
            )
        return self._md_model.fuse(patched, batch_size=patched.shape[0] // P)

    def _condition_rows(
        self,
        start: int,
        stop: int,
        B: int,
        pos_embd_rows: Tensor | None = None,
        condition_rows: Tensor | TensorDict | None = None,
    ) -> Tensor | TensorDict | None:
        """Rows [start, stop) of the patched condition (``condition_rows`` if given), with the
        positional embedding (the rows of the patched grid embedding unless given)."""
        cond = self._cond_patched
        if condition_rows is not None:
            if cond is not None:
                raise ValueError(
                    "condition_rows were given but the predictor has a condition bound; "
                    "construct it with condition=None to pass patched condition rows"
                )
            cond = condition_rows
        elif cond is not None:
            if not torch.compiler.is_compiling() and cond.shape[0] != self._P * B:
                raise ValueError(
                    f"condition was bound for batch size {cond.shape[0] // self._P} but x has "
                    f"batch size {B}"
                )
            cond = cond[start:stop]
        if self._md_model.has_pos_embd:
            if pos_embd_rows is None:
                pos_embd_rows = self._pos_embd_rows(start, stop, B)
            cond = self._md_model._inject_patched_pos_embd(cond, pos_embd_rows, stop - start)
        return cond

    def _pos_embd_rows(self, start: int, stop: int, B: int) -> Tensor:
        """Patched positional embedding (K, C_PE, Hp, Wp) of rows [start, stop): only the
        chunk's patches are extracted; unchunked calls patch the whole grid once and keep it."""
        md, p0, p1 = self._md_model, start // B, (stop - 1) // B + 1
        if self._chunk_size is None:
            if self._pos_embd_patched is None:
                self._pos_embd_patched = md.patch_x(md.pos_embd.unsqueeze(0))  # (P, C_PE, ..)
            pe, p0 = self._pos_embd_patched, 0
        else:
            pe = self._patching.apply_rows(md.pos_embd.unsqueeze(0), p0, p1)  # (p1 - p0, ..)
        return pe[torch.arange(start, stop, device=pe.device) // B - p0]  # patch of each row

    def _call_model(self, x_p: Tensor, t_p: Tensor, cond: Tensor | TensorDict | None) -> Tensor:
        """The patch model on (K, C, Hp, Wp), recomputed in backward with checkpointing."""

        def run(x_c: Tensor, t_c: Tensor, cond=cond) -> Tensor:
            return self._md_model(
                x_c,
                t_c,
                condition=cond,
                x_is_patched=True,
                t_is_patched=True,
                condition_is_patched=True,
                **self._model_kwargs,
            )

        if self._use_checkpointing:
            return checkpoint(run, x_p, t_p, use_reentrant=False)
        return run(x_p, t_p)

    def predict_rows(
        self,
        x_rows: Tensor,
        t_rows: Tensor,
        start: int,
        batch_size: int,
        pos_embd_rows: Tensor | None = None,
        condition_rows: Tensor | TensorDict | None = None,
    ) -> Tensor:
        """x0_hat (K, C, Hp, Wp) of rows [start, start + K) of the patched global state, given
        those rows ``x_rows`` (K, C, Hp, Wp) and their times ``t_rows`` (K,): the model with
        the rows' patched condition and positional embedding (``batch_size`` B of the global
        state), its output converted to x0. Callers that patch the embedding or the condition
        themselves (tiled sampling) pass ``pos_embd_rows`` (K, C_PE, Hp, Wp) or
        ``condition_rows`` (K, ...; no condition may then be bound). Summed with
        :meth:`GridPatching2D.accumulate` over all rows, this is the fused prediction."""
        self._check_patching_set()
        stop = start + x_rows.shape[0]
        cond = self._condition_rows(start, stop, batch_size, pos_embd_rows, condition_rows)
        return self._to_x0(self._call_model(x_rows, t_rows, cond), x_rows, t_rows)

    def _rows(self, x: Tensor, t: Tensor, start: int, stop: int) -> tuple[Tensor, Tensor, Tensor]:
        """(x0_hat, x, t) on patch rows [start, stop)."""
        B = x.shape[0]
        x_c = self._patching.apply_rows(x, start, stop)  # (K, C, Hp, Wp)
        t_c = t[torch.arange(start, stop, device=t.device) % B]  # row p B + b has t of sample b
        return self.predict_rows(x_c, t_c, start, B), x_c, t_c

    def chunks(self, x: Tensor, t: Tensor) -> Iterator[tuple[int, Tensor, Tensor, Tensor]]:
        """Yield ``(start, x0_chunk, x_chunk, t_chunk)`` for consecutive chunks of at most
        ``chunk_size`` patch rows, extracting only the rows of the chunk; fuse the
        concatenated ``x0_chunk`` with :meth:`fuse_fn`. Requires ``chunk_size``."""
        self._check_patching_set()
        if self._chunk_size is None:
            raise RuntimeError(
                "chunk_size must be set at construction to use chunks(). "
                "Pass chunk_size=<int> to MultiDiffusionPredictor.__init__."
            )
        total = self._P * x.shape[0]
        for start in range(0, total, self._chunk_size):
            stop = min(start + self._chunk_size, total)
            yield (start, *self._rows(x, t, start, stop))

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        """x0_hat (B, C, H, W) of a global state x (B, C, H, W) at times t (B,), or the patch
        predictions (P B, C, Hp, Wp) when ``fuse`` is False."""
        self._check_patching_set()
        if self._chunk_size is None:
            x0, _, _ = self._rows(x, t, 0, self._P * x.shape[0])
            return self.fuse_fn(x0) if self._fuse else x0
        if not self._fuse or torch.is_grad_enabled():
            x0_chunks = [x0_c for _, x0_c, _, _ in self.chunks(x, t)]
            if not self._fuse:
                return torch.cat(x0_chunks, dim=0)
            return self._patching.fuse_chunks(x0_chunks, x.shape[0])
        acc = None  # stream each chunk into the fused output, then drop it
        for start, x0_c, _, _ in self.chunks(x, t):
            if acc is None:
                shape = (x.shape[0], x0_c.shape[1], *self._patching.img_shape)
                acc = x0_c.new_zeros(shape, dtype=_grid.accum_dtype(x0_c.dtype))
            self._patching.accumulate(acc, x0_c, start)
        return acc
