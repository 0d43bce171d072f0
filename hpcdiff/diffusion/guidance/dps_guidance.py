"""Diffusion posterior sampling (DPS, Chung et al. 2023) with the SDA variance correction
(Rozet & Louppe 2023): guided score = score(x0_hat) + grad_x log p(y | x0_hat(x_t, t))."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import torch

from hpcdiff.diffusion._tensor import per_sample
from hpcdiff.diffusion.base import Predictor
from hpcdiff.diffusion.utils.utils import _as_broadcastable

Tensor = torch.Tensor
LossFn = Callable[[Tensor, Tensor], Tensor]


def _refuse_inference_mode(owner: str) -> None:
    """Autograd cannot run under ``torch.inference_mode``: fail with a RuntimeError saying so."""
    if not torch.compiler.is_compiling() and torch.is_inference_mode_enabled():
        raise RuntimeError(
            f"{owner} differentiates through the x0-predictor, but torch.inference_mode is "
            "enabled; run sampling under 'torch.no_grad()' (or 'torch.inference_mode(False)')"
        )


def _lp_loss(p: int) -> LossFn:
    """Elementwise |y_pred - y|^p (no reduction)."""

    def loss(y_pred: Tensor, y_true: Tensor) -> Tensor:
        return (y_pred - y_true).abs().pow(p)

    return loss


@runtime_checkable
class DPSGuidance(Protocol):
    """Callable ``(x, t, x_0) -> term`` (B, *) added to the score, e.g. a likelihood score
    grad_x sum_i rho_i(t) l(A(x_0), y)_i; ``x_0`` is the x0-prediction computed from ``x``.

    >>> class Pull:
    ...     def __call__(self, x, t, x_0):
    ...         return -(x_0 - 1.0)
    >>> isinstance(Pull(), DPSGuidance)
    True
    """

    def __call__(self, x: Tensor, t: Tensor, x_0: Tensor) -> Tensor: ...


class DPSScorePredictor(Predictor):
    """Score predictor from an x0-predictor plus guidances: s(x, t) = score(x0_hat) + sum_i g_i.

    ``x0_to_score_fn(x_0, x, t)`` converts the x0-prediction to a score (e.g. a scheduler's
    ``x0_to_score``); pass the result to ``get_denoiser(score_predictor=...)``. Sample under
    ``torch.no_grad()``: autograd is re-enabled locally for the guidance gradients, and the
    returned score carries no graph. ``torch.inference_mode`` is refused (RuntimeError).
    With several autograd guidances, all but the last need ``retain_graph=True``.

    >>> pred = DPSScorePredictor(
    ...     x0_predictor=lambda x, t: 0.5 * x,
    ...     x0_to_score_fn=lambda x_0, x, t: (x_0 - x) / t.view(-1, 1) ** 2,
    ...     guidances=lambda x, t, x_0: torch.ones_like(x),
    ... )
    >>> with torch.no_grad():
    ...     pred(torch.full((1, 2), 2.0), torch.ones(1))
    tensor([[0., 0.]])
    """

    def __init__(
        self,
        x0_predictor: Predictor,
        x0_to_score_fn: Callable[[Tensor, Tensor, Tensor], Tensor],
        guidances: DPSGuidance | Sequence[DPSGuidance],
    ) -> None:
        self.x0_predictor = x0_predictor
        self.x0_to_score_fn = x0_to_score_fn
        if isinstance(guidances, Sequence) and not isinstance(guidances, str):
            self.guidances = list(guidances)
        else:
            self.guidances = [guidances]
        for g in self.guidances:
            if not callable(g):
                raise TypeError(f"guidances must be callables (x, t, x_0), got {type(g).__name__}")

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        """Guided score at ``x`` (B, *) and times ``t`` (B,)."""
        _refuse_inference_mode("DPSScorePredictor")
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            x_0 = self.x0_predictor(x, t)  # (B, *), differentiable in x
            guidance = torch.zeros_like(x)
            for g in self.guidances:
                guidance = guidance + g(x, t, x_0)
        return self.x0_to_score_fn(x_0, x, t) + guidance


class _GaussianLikelihoodGuidance(DPSGuidance):
    """Shared part of the DPS guidances: -grad_x sum_i rho_i(t) l_i(x_0), with
    rho(t) = 1 / (2 (std_y^2 + gamma sigma(t)^2 / alpha(t)^2)) (SDA; gamma = 0 is plain DPS)."""

    def __init__(
        self,
        y: Tensor,
        std_y: float | Tensor,
        norm: int | LossFn,
        gamma: float | Tensor,
        sigma_fn: Callable[[Tensor], Tensor] | None,
        alpha_fn: Callable[[Tensor], Tensor] | None,
        retain_graph: bool,
        create_graph: bool,
    ) -> None:
        self.y = y
        self.std_y = _as_broadcastable(std_y, y)
        self.gamma = _as_broadcastable(gamma, y)
        if sigma_fn is None and bool((self.gamma > 0).any()):
            raise ValueError("sigma_fn must be provided when gamma > 0 (SDA scaling)")
        if isinstance(norm, bool) or not (isinstance(norm, int) or callable(norm)):
            raise TypeError(f"norm must be an int p or an elementwise loss callable, got {norm!r}")
        if isinstance(norm, int) and norm < 1:
            raise ValueError(f"norm must be a positive integer p, got {norm}")
        self._loss_fn: LossFn = _lp_loss(norm) if isinstance(norm, int) else norm
        self.sigma_fn = sigma_fn if sigma_fn is not None else torch.zeros_like  # plain DPS
        self.alpha_fn = alpha_fn if alpha_fn is not None else torch.ones_like  # alpha(t) = 1
        self.retain_graph = retain_graph
        self.create_graph = create_graph

    def _rho(self, x: Tensor, t: Tensor, loss: Tensor) -> Tensor:
        """Guidance strength rho(t) in ``x``'s dtype, broadcast against ``loss`` (B, *obs)."""
        std_y = self.std_y.to(dtype=x.dtype, device=x.device)
        gamma = self.gamma.to(dtype=x.dtype, device=x.device)
        t_bc = per_sample(t, loss)  # (B, 1, ..., 1)
        sigma, alpha = self.sigma_fn(t_bc), self.alpha_fn(t_bc)
        return 1.0 / (2.0 * (std_y**2 + gamma * sigma**2 / alpha**2))

    def _likelihood_score(self, x: Tensor, t: Tensor, loss: Tensor) -> Tensor:
        """-grad_x sum(rho(t) * loss), ``loss`` elementwise and differentiable in ``x``."""
        (grad_x,) = torch.autograd.grad(
            (self._rho(x, t, loss) * loss).sum(),
            x,
            retain_graph=self.retain_graph,
            create_graph=self.create_graph,
        )
        return -grad_x


class ModelConsistencyDPSGuidance(_GaussianLikelihoodGuidance):
    """DPS guidance for y = A(x_0) + n, n ~ N(0, std_y^2): the term is
    -grad_x sum_i l(A(x0_hat), y)_i / (2 (std_y_i^2 + gamma_i sigma(t)^2 / alpha(t)^2)).

    Parameters
    ----------
    observation_operator : Callable[[Tensor], Tensor]
        Differentiable A: (B, *) -> (B, *obs).
    y : Tensor
        Observations (B, *obs).
    std_y, gamma : float or Tensor
        Noise std and SDA factor, scalars or tensors broadcastable to ``y``.
    norm : int or Callable
        p of the elementwise loss |A(x_0) - y|^p (default 2), or an elementwise loss
        ``(y_pred, y) -> (B, *obs)``; p != 2 is an ad hoc change of the Gaussian likelihood.
    sigma_fn, alpha_fn : Callable, optional
        sigma(t) (required if any gamma > 0) and alpha(t) (default 1), e.g. a scheduler's.
    retain_graph, create_graph : bool
        Passed to ``torch.autograd.grad``.

    >>> g = ModelConsistencyDPSGuidance(lambda x: x[:, :1], torch.zeros(1, 1), std_y=1.0)
    >>> x = torch.tensor([[1.0, 5.0]], requires_grad=True)
    >>> g(x, torch.ones(1), 2.0 * x)
    tensor([[-4., -0.]])
    """

    def __init__(
        self,
        observation_operator: Callable[[Tensor], Tensor],
        y: Tensor,
        std_y: float | Tensor,
        norm: int | LossFn = 2,
        gamma: float | Tensor = 0.0,
        sigma_fn: Callable[[Tensor], Tensor] | None = None,
        alpha_fn: Callable[[Tensor], Tensor] | None = None,
        retain_graph: bool = False,
        create_graph: bool = False,
    ) -> None:
        super().__init__(y, std_y, norm, gamma, sigma_fn, alpha_fn, retain_graph, create_graph)
        self.observation_operator = observation_operator

    def __call__(self, x: Tensor, t: Tensor, x_0: Tensor) -> Tensor:
        """Likelihood score (B, *); ``x`` requires grad and ``x_0`` was computed from it."""
        _refuse_inference_mode("ModelConsistencyDPSGuidance")
        y = self.y.to(dtype=x.dtype, device=x.device)
        with torch.enable_grad():
            loss = self._loss_fn(self.observation_operator(x_0), y)  # (B, *obs)
            return self._likelihood_score(x, t, loss)


class DataConsistencyDPSGuidance(_GaussianLikelihoodGuidance):
    """DPS guidance for masked observations y = M * x_0 + n: the term is
    -grad_x sum_i M_i l(x0_hat, y)_i / (2 (std_y_i^2 + gamma_i sigma(t)^2 / alpha(t)^2)).

    ``mask`` (B, *) is True (or 1) where ``y`` (B, *) is observed; ``std_y``, ``gamma`` are
    scalars or tensors broadcastable to the state; other arguments as in
    :class:`ModelConsistencyDPSGuidance`.

    >>> mask = torch.tensor([[True, False]])
    >>> g = DataConsistencyDPSGuidance(mask, torch.zeros(1, 2), std_y=0.5)
    >>> x = torch.tensor([[1.0, 5.0]], requires_grad=True)
    >>> g(x, torch.ones(1), x)
    tensor([[-4., -0.]])
    """

    def __init__(
        self,
        mask: Tensor,
        y: Tensor,
        std_y: float | Tensor,
        norm: int | LossFn = 2,
        gamma: float | Tensor = 0.0,
        sigma_fn: Callable[[Tensor], Tensor] | None = None,
        alpha_fn: Callable[[Tensor], Tensor] | None = None,
        retain_graph: bool = False,
        create_graph: bool = False,
    ) -> None:
        super().__init__(y, std_y, norm, gamma, sigma_fn, alpha_fn, retain_graph, create_graph)
        self.mask = mask.float()

    def __call__(self, x: Tensor, t: Tensor, x_0: Tensor) -> Tensor:
        """Likelihood score (B, *); ``x`` requires grad and ``x_0`` was computed from it."""
        _refuse_inference_mode("DataConsistencyDPSGuidance")
        mask = self.mask.to(dtype=x.dtype, device=x.device)
        y = self.y.to(dtype=x.dtype, device=x.device)
        with torch.enable_grad():
            loss = mask * self._loss_fn(x_0, y)  # (B, *), zero where unobserved
            return self._likelihood_score(x, t, loss)
