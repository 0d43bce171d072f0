"""Reverse-process rhs closures of LinearGaussianNoiseScheduler.get_denoiser.

With s the score, the rhs is f(x, t) - k g^2(t) s(x, t), k = 1/2 for the probability-flow ODE
and k = 1 for the reverse SDE drift (Song et al. 2021, eqs. 6 and 13). When the scheduler keeps
the default f, g^2 and conversions, the per-sample coefficients are folded into (B, 1, ..., 1)
tensors so each call makes two passes over the state instead of six; otherwise the scheduler's
own (overridden) methods are called term by term.
"""

from __future__ import annotations

from typing import Literal

import torch

from hpcdiff.diffusion._tensor import bcast
from hpcdiff.diffusion.base import Denoiser, Predictor
from hpcdiff.diffusion.noise_schedulers._families import UnitSignalMixin

PredictionKind = Literal["x0", "score", "epsilon"]


def build_denoiser(
    scheduler, predictor: Predictor, kind: PredictionKind, k: float, folded: bool
) -> Denoiser:
    """Rhs f - k g^2 s from a ``kind`` predictor; ``folded`` when f, g^2 are the defaults."""
    if not folded:
        return _termwise(scheduler, predictor, kind, k)
    cls = type(scheduler)
    if cls.alpha is UnitSignalMixin.alpha and cls.alpha_dot is UnitSignalMixin.alpha_dot:
        return _unit_signal(scheduler, predictor, kind, k)
    return _general(scheduler, predictor, kind, k)


def _termwise(s, predictor: Predictor, kind: PredictionKind, k: float) -> Denoiser:
    """f(x, t) - k g^2(x, t) s(x, t) with each term from the scheduler's own methods."""

    def denoiser(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        y = predictor(x, t)
        if kind == "x0":
            score = s.x0_to_score(y, x, t)
        elif kind == "epsilon":
            score = s.epsilon_to_score(y, t)
        else:
            score = y
        return s.drift(x, t) - k * s.diffusion(x, t) * score

    return denoiser


def _unit_signal(s, predictor: Predictor, kind: PredictionKind, k: float) -> Denoiser:
    """alpha = 1, so f = 0 and g^2 = 2 sigma' sigma: the rhs is one coefficient times a term.

    x0: -2k sigma'/sigma (x0 - x) (EDM ODE: (x - x0) / t); score: -2k sigma' sigma s;
    epsilon: 2k sigma' eps.
    """

    def from_x0(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x0 = predictor(x, t)
        t_bc = bcast(t, x)  # (B, 1, ..., 1)
        return (-2 * k * s.sigma_dot(t_bc) / s.sigma(t_bc)) * (x0 - x)

    def from_score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        score = predictor(x, t)
        t_bc = bcast(t, x)
        return (-2 * k * s.sigma_dot(t_bc) * s.sigma(t_bc)) * score

    def from_epsilon(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps = predictor(x, t)
        return (2 * k * s.sigma_dot(bcast(t, x))) * eps

    return {"x0": from_x0, "score": from_score, "epsilon": from_epsilon}[kind]


def _general(s, predictor: Predictor, kind: PredictionKind, k: float) -> Denoiser:
    """(alpha'/alpha) x + w z, with w z = -k g^2 s written in the predicted quantity z.

    x0: z = alpha x0 - x, w = -k g^2 / sigma^2; score: z = s, w = -k g^2;
    epsilon: z = eps, w = k g^2 / sigma.
    """

    def coefficients(x: torch.Tensor, t: torch.Tensor):
        t_bc = bcast(t, x)  # (B, 1, ..., 1)
        sigma, alpha = s.sigma(t_bc), s.alpha(t_bc)
        f_coef = s.alpha_dot(t_bc) / alpha
        g_sq = 2 * s.sigma_dot(t_bc) * sigma - 2 * f_coef * sigma**2
        return f_coef, k * g_sq, sigma, alpha

    def from_x0(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x0 = predictor(x, t)
        f_coef, kg_sq, sigma, alpha = coefficients(x, t)
        return torch.addcmul(f_coef * x, -kg_sq / sigma**2, alpha * x0 - x)

    def from_score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        score = predictor(x, t)
        f_coef, kg_sq, _, _ = coefficients(x, t)
        return torch.addcmul(f_coef * x, -kg_sq, score)

    def from_epsilon(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps = predictor(x, t)
        f_coef, kg_sq, sigma, _ = coefficients(x, t)
        return torch.addcmul(f_coef * x, kg_sq / sigma, eps)

    return {"x0": from_x0, "score": from_score, "epsilon": from_epsilon}[kind]
