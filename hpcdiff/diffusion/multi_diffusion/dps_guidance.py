"""Patch-local diffusion posterior sampling (DPS, Chung et al. 2023; SDA scaling, Rozet & Louppe
2023) for multi-diffusion: the guided score is fused from per-patch terms computed one chunk
of patches at a time, s(x, t) = Fuse_p[score(x0_hat_p) + sum_i g_i(x_p, t, x0_hat_p)], so
memory stays bounded by the chunk instead of the P B patches."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import torch

from hpcdiff.diffusion._tensor import per_sample
from hpcdiff.diffusion.base import Predictor
from hpcdiff.diffusion.guidance.dps_guidance import (
    _GaussianLikelihoodGuidance,
    _refuse_inference_mode,
)
from hpcdiff.diffusion.multi_diffusion import _grid
from hpcdiff.diffusion.multi_diffusion.predictor import MultiDiffusionPredictor

Tensor = torch.Tensor
LossFn = Callable[[Tensor, Tensor], Tensor]


@runtime_checkable
class MultiDiffusionDPSGuidance(Protocol):
    """Patch-local guidance ``(x, t, x_0, slice_start=None) -> term`` on patch rows: all P B
    rows when ``slice_start`` is None, else the chunk of rows starting there.

    >>> class Pull:
    ...     def __call__(self, x, t, x_0, slice_start=None):
    ...         return -(x_0 - 1.0)
    >>> isinstance(Pull(), MultiDiffusionDPSGuidance)
    True
    """

    def __call__(
        self, x: Tensor, t: Tensor, x_0: Tensor, slice_start: int | None = None
    ) -> Tensor: ...


class MultiDiffusionDPSScorePredictor(Predictor):
    """Guided score (B, C, H, W) from a chunked :class:`MultiDiffusionPredictor` and patch-local
    guidances: for each chunk, x0_to_score_fn(x0_hat, x, t) + sum_i g_i(x, t, x0_hat,
    slice_start), fused over patches. Use with ``get_denoiser(score_predictor=...)`` under
    ``torch.no_grad()`` (the chunks are then fused as they come); ``torch.inference_mode``
    is refused. Globally coupled guidances need :class:`~hpcdiff.diffusion.guidance.
    DPSScorePredictor` instead.

    >>> from hpcdiff.diffusion.multi_diffusion import MultiDiffusionModel2D
    >>> # Net: any DiffusionModel; here a 1x1 convolution (defined in conftest.py)
    >>> md = MultiDiffusionModel2D(Net(1), global_spatial_shape=(8, 8))
    >>> md.set_random_patching(patch_shape=(4, 4), patch_num=2)
    >>> pred = MultiDiffusionPredictor(md, chunk_size=3)
    >>> pred.set_patching(overlap_pix=1, boundary_pix=0)
    >>> guidance = MultiDiffusionDataConsistencyDPSGuidance(
    ...     pred, mask=torch.ones(2, 1, 8, 8, dtype=torch.bool), y=torch.zeros(2, 1, 8, 8),
    ...     std_y=0.1)
    >>> score = MultiDiffusionDPSScorePredictor(
    ...     pred, lambda x0, x, t: (x0 - x) / t.view(-1, 1, 1, 1) ** 2, guidance)
    >>> with torch.no_grad():
    ...     score(torch.randn(2, 1, 8, 8), torch.ones(2)).shape
    torch.Size([2, 1, 8, 8])
    """

    def __init__(
        self,
        x0_predictor: MultiDiffusionPredictor,
        x0_to_score_fn: Callable[[Tensor, Tensor, Tensor], Tensor],
        guidances: MultiDiffusionDPSGuidance | Sequence[MultiDiffusionDPSGuidance],
    ) -> None:
        if not isinstance(x0_predictor, MultiDiffusionPredictor):
            raise TypeError(
                f"x0_predictor must be a MultiDiffusionPredictor, got "
                f"{type(x0_predictor).__name__}."
            )
        if x0_predictor._chunk_size is None:
            raise ValueError(
                "x0_predictor must have chunk_size set. Pass chunk_size=<int> to "
                "MultiDiffusionPredictor.__init__."
            )
        self.x0_predictor = x0_predictor
        self.x0_to_score_fn = x0_to_score_fn
        if isinstance(guidances, Sequence) and not isinstance(guidances, str):
            self.guidances = list(guidances)
        else:
            self.guidances = [guidances]

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        """Guided score at the global state x (B, C, H, W) and times t (B,)."""
        _refuse_inference_mode("MultiDiffusionDPSScorePredictor")
        outer_grad = torch.is_grad_enabled()
        pred, B = self.x0_predictor, x.shape[0]
        x = x.detach().requires_grad_(True)
        chunks, acc = [], None
        with torch.enable_grad():
            for start, x0_c, x_c, t_c in pred.chunks(x, t):
                g_c = torch.zeros_like(x0_c)
                for g in self.guidances:
                    g_c = g_c + g(x_c, t_c, x0_c, slice_start=start)
                with torch.set_grad_enabled(outer_grad):
                    term = self.x0_to_score_fn(x0_c, x_c, t_c) + g_c  # (K, C, Hp, Wp)
                if outer_grad:
                    chunks.append(term)
                    continue
                if acc is None:  # no graph to keep: fuse the chunk now and drop it
                    shape = (B, term.shape[1], *pred._patching.img_shape)
                    acc = term.new_zeros(shape, dtype=_grid.accum_dtype(term.dtype))
                pred._patching.accumulate(acc, term.detach(), start)
        return pred._patching.fuse_chunks(chunks, B) if outer_grad else acc


def _patched_param(value: Tensor, predictor: MultiDiffusionPredictor, y: Tensor) -> Tensor:
    """``value`` (broadcastable to the global y (B, C, H, W)) in the patch layout: kept as a
    scalar, repeated per patch when spatially constant, else patched like y."""
    if value.numel() == 1:
        return value.reshape(())
    v = value.reshape((1,) * (4 - value.ndim) + tuple(value.shape))
    if v.shape[-2:] == (1, 1):  # per (sample, channel): (P B, C, 1, 1)
        return v.expand(*y.shape[:2], 1, 1).repeat(predictor.patch_num, 1, 1, 1)
    return predictor.patch_fn(torch.broadcast_to(v, y.shape).contiguous())


def _rows(tensor: Tensor, rows: slice, like: Tensor) -> Tensor:
    """Rows of a patch-layout tensor (scalars broadcast), in ``like``'s dtype and device."""
    out = tensor if tensor.ndim == 0 else tensor[rows]
    return out.to(dtype=like.dtype, device=like.device)


class _PatchLocalLikelihood(_GaussianLikelihoodGuidance):
    """Gaussian-likelihood DPS term of the global guidances on patch rows: y, std_y and gamma
    are patched once with the predictor and sliced per chunk."""

    def _setup(self, predictor: MultiDiffusionPredictor, y: Tensor, fuse: bool) -> None:
        self.predictor = predictor
        self.fuse = fuse
        self.std_y = _patched_param(self.std_y, predictor, y)
        self.gamma = _patched_param(self.gamma, predictor, y)
        self.y = predictor.patch_fn(y)  # (P B, C_obs, Hp, Wp)

    def _rho_rows(self, x: Tensor, t: Tensor, loss: Tensor, rows: slice) -> Tensor:
        """rho(t) = 1 / (2 (std_y^2 + gamma sigma(t)^2 / alpha(t)^2)) on the chunk's rows."""
        variance = _rows(self.std_y, rows, x) ** 2
        if self.sigma_fn is not None:
            t_bc = per_sample(t, loss)  # (K, 1, 1, 1)
            sigma = self.sigma_fn(t_bc)
            alpha = self.alpha_fn(t_bc) if self.alpha_fn is not None else torch.ones_like(sigma)
            variance = variance + _rows(self.gamma, rows, x) * sigma**2 / alpha**2
        return 1.0 / (2.0 * variance)

    def _term(self, x: Tensor, t: Tensor, loss: Tensor, rows: slice, slice_start) -> Tensor:
        """-grad_x sum(rho loss) on the chunk, fused in full-batch mode when asked."""
        (grad_x,) = torch.autograd.grad(
            (self._rho_rows(x, t, loss, rows) * loss).sum(),
            x,
            retain_graph=self.retain_graph,
            create_graph=self.create_graph,
        )
        if slice_start is None and self.fuse:
            return self.predictor.fuse_fn(-grad_x)
        return -grad_x


def _chunk_rows(x: Tensor, slice_start: int | None) -> slice:
    return slice(None) if slice_start is None else slice(slice_start, slice_start + x.shape[0])


class MultiDiffusionModelConsistencyDPSGuidance(_PatchLocalLikelihood):
    """Patch-local :class:`~hpcdiff.diffusion.guidance.ModelConsistencyDPSGuidance`: for the
    chunk's patches, -grad_x sum_i l(A(x0_hat), y)_i / (2 (std_y_i^2 + gamma_i sigma(t)^2 /
    alpha(t)^2)), with A acting on patches and y (B, C_obs, H, W) at the global resolution
    (patched once). ``fuse`` fuses the term in full-batch mode (``slice_start=None``).
    """

    def __init__(
        self,
        predictor: MultiDiffusionPredictor,
        observation_operator: Callable[[Tensor], Tensor],
        y: Tensor,
        std_y: float | Tensor,
        norm: int | LossFn = 2,
        gamma: float | Tensor = 0.0,
        sigma_fn: Callable[[Tensor], Tensor] | None = None,
        alpha_fn: Callable[[Tensor], Tensor] | None = None,
        fuse: bool = False,
        retain_graph: bool = False,
        create_graph: bool = False,
    ) -> None:
        super().__init__(y, std_y, norm, gamma, sigma_fn, alpha_fn, retain_graph, create_graph)
        self.observation_operator = observation_operator
        self._setup(predictor, y, fuse)

    def __call__(self, x: Tensor, t: Tensor, x_0: Tensor, slice_start: int | None = None) -> Tensor:
        """Term (K, C, Hp, Wp) for patch rows ``x`` (requires grad), times ``t`` (K,) and
        ``x_0`` computed from ``x``."""
        _refuse_inference_mode("MultiDiffusionModelConsistencyDPSGuidance")
        rows = _chunk_rows(x, slice_start)
        with torch.enable_grad():
            loss = self._loss_fn(self.observation_operator(x_0), _rows(self.y, rows, x))
            return self._term(x, t, loss, rows, slice_start)


class MultiDiffusionDataConsistencyDPSGuidance(_PatchLocalLikelihood):
    """Patch-local :class:`~hpcdiff.diffusion.guidance.DataConsistencyDPSGuidance`: for the
    chunk's patches, -grad_x sum_i M_i l(x0_hat, y)_i / (2 (std_y_i^2 + gamma_i sigma(t)^2 /
    alpha(t)^2)), with ``mask`` M and ``y`` (B, C, H, W) patched once.
    ``fuse`` fuses the term in full-batch mode (``slice_start=None``).
    """

    def __init__(
        self,
        predictor: MultiDiffusionPredictor,
        mask: Tensor,
        y: Tensor,
        std_y: float | Tensor,
        norm: int | LossFn = 2,
        gamma: float | Tensor = 0.0,
        sigma_fn: Callable[[Tensor], Tensor] | None = None,
        alpha_fn: Callable[[Tensor], Tensor] | None = None,
        fuse: bool = False,
        retain_graph: bool = False,
        create_graph: bool = False,
    ) -> None:
        super().__init__(y, std_y, norm, gamma, sigma_fn, alpha_fn, retain_graph, create_graph)
        self._setup(predictor, y, fuse)
        self.mask = predictor.patch_fn(mask.float())  # (P B, C, Hp, Wp)

    def __call__(self, x: Tensor, t: Tensor, x_0: Tensor, slice_start: int | None = None) -> Tensor:
        """Term (K, C, Hp, Wp) for patch rows ``x`` (requires grad), times ``t`` (K,) and
        ``x_0`` computed from ``x``."""
        _refuse_inference_mode("MultiDiffusionDataConsistencyDPSGuidance")
        rows = _chunk_rows(x, slice_start)
        with torch.enable_grad():
            loss = _rows(self.mask, rows, x) * self._loss_fn(x_0, _rows(self.y, rows, x))
            return self._term(x, t, loss, rows, slice_start)
