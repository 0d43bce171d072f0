"""The noise injection ("churn") shared by the EDM stochastic samplers (Karras et al. 2022)."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import torch

from hpcdiff.diffusion._tensor import per_sample
from hpcdiff.diffusion.base import Denoiser
from hpcdiff.diffusion.samplers.base import NoiseFn

TimeFn = Callable[[torch.Tensor], torch.Tensor]
DiffusionFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


def _edm_g_sq(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """EDM's squared diffusion ``g^2(t) = 2 t`` as (B, 1, ..., 1)."""
    return 2 * per_sample(t, x)


class EDMChurn:
    """Churn of Algorithm 2 in Karras et al. 2022: ``sigma_hat = (1 + gamma) sigma(t)`` with
    ``gamma = min(S_churn / N, sqrt(2) - 1)`` where ``S_min <= sigma(t) <= S_max`` (else 0),
    ``t_hat = sigma^-1(sigma_hat)``, ``x_hat = x + S_noise sqrt(v) sqrt(g^2(x, t) / 2t) eps``
    with ``v`` the variance increment chosen by the solver. Every ``eps`` comes from
    ``noise_fn(x)`` when given (e.g. noise keyed by global position in tiled sampling), else
    from ``generator`` (default: the global generator)."""

    def __init__(
        self,
        denoiser: Denoiser,
        S_churn: float = 0,
        S_min: float = 0,
        S_max: float = float("inf"),
        S_noise: float = 1,
        num_steps: int = 18,
        sigma_fn: TimeFn | None = None,
        sigma_inv_fn: TimeFn | None = None,
        diffusion_fn: DiffusionFn | None = None,
        *,
        generator: torch.Generator | None = None,
        noise_fn: NoiseFn | None = None,
    ) -> None:
        if generator is not None and noise_fn is not None:
            raise ValueError("give generator or noise_fn, not both: noise_fn draws all noise")
        if (sigma_fn is None) != (sigma_inv_fn is None):
            raise ValueError(
                "sigma_fn and sigma_inv_fn must be given together or both be None, got "
                f"sigma_fn={sigma_fn!r}, sigma_inv_fn={sigma_inv_fn!r}"
            )
        if num_steps < 1:
            raise ValueError(f"num_steps must be a positive integer, got {num_steps}")
        self.denoiser = denoiser
        self.S_churn, self.S_min, self.S_max, self.S_noise = S_churn, S_min, S_max, S_noise
        self.num_steps = num_steps
        self.sigma_fn = sigma_fn if sigma_fn is not None else _identity
        self.sigma_inv_fn = sigma_inv_fn if sigma_inv_fn is not None else _identity
        self.diffusion_fn = diffusion_fn if diffusion_fn is not None else _edm_g_sq
        self.generator = generator
        self.noise_fn = noise_fn

    def raise_noise_level(
        self, t_cur_bc: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(sigma, sigma_hat, t_hat)`` for times ``t_cur_bc`` (B, 1, ..., 1)."""
        gamma_max = min(self.S_churn / self.num_steps, math.sqrt(2) - 1)
        sigma = self.sigma_fn(t_cur_bc)
        in_range = (sigma >= self.S_min) & (sigma <= self.S_max)
        gamma = gamma_max * in_range.to(sigma.dtype)
        sigma_hat = sigma + gamma * sigma
        return sigma, sigma_hat, self.sigma_inv_fn(sigma_hat)

    def perturb(
        self, x: torch.Tensor, t_cur: torch.Tensor, t_cur_bc: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        """``x_hat = x + S_noise sqrt(max(v, 0)) sqrt(g^2 / 2t) eps``; no noise where t = 0."""
        g_sq = self.diffusion_fn(x, t_cur)
        at_zero = t_cur_bc == 0
        safe_t = torch.where(at_zero, torch.ones_like(t_cur_bc), t_cur_bc)
        scale = v.clamp(min=0).sqrt() * self.S_noise * (g_sq / (2 * safe_t)).sqrt()
        scale = torch.where(at_zero, torch.zeros_like(scale), scale)
        return self._randn(x).mul_(scale).add_(x)

    def _randn(self, x: torch.Tensor) -> torch.Tensor:
        """Standard normal noise shaped like ``x``: every injected draw goes through here."""
        if self.noise_fn is not None:
            return self.noise_fn(x)
        if self.generator is None:
            return torch.randn_like(x)
        return torch.randn(x.shape, generator=self.generator, dtype=x.dtype, device=x.device)


_CHURN_ARGS = frozenset(inspect.signature(EDMChurn.__init__).parameters) - {"self", "denoiser"}


def churn_args(scope: dict[str, Any]) -> dict[str, Any]:
    """The :class:`EDMChurn` arguments among a solver constructor's ``locals()``, so that
    solvers whose (reference) signatures add their own parameters pass them on by keyword."""
    return {name: value for name, value in scope.items() if name in _CHURN_ARGS}
