"""Reverse-process rhs closures of LinearGaussianNoiseScheduler.get_denoiser.

With s the score, the rhs is f(x, t) - k g^2(t) s(x, t), k = 1/2 for the probability-flow ODE
and k = 1 for the reverse SDE drift (Song et al. 2021, eqs. 6 and 13). When the scheduler keeps
the default f, g^2 and conversions, the per-sample coefficients are folded into (B, 1, ..., 1)
tensors so each call makes two passes over the state instead of six; otherwise the scheduler's
own (overridden) methods are called term by term. With the velocity v = E[dx_t/dt | x_t], the
rhs is f + 2k (v - f): the ODE rhs is v itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple

import torch

from hpcdiff.diffusion._tensor import per_sample
from hpcdiff.diffusion.base import Denoiser, Predictor
from hpcdiff.diffusion.noise_schedulers._families import UnitSignalMixin

PredictionKind = Literal["x0", "score", "epsilon", "velocity"]
TimeFn = Callable[[torch.Tensor], torch.Tensor]


def pick_predictor(
    score: Predictor | None,
    x0: Predictor | None,
    epsilon: Predictor | None,
    velocity: Predictor | None,
) -> tuple[PredictionKind, Predictor]:
    """The one predictor given to ``get_denoiser`` and its kind; ValueError unless exactly one."""
    given = {"score": score, "x0": x0, "epsilon": epsilon, "velocity": velocity}
    given = {kind: p for kind, p in given.items() if p is not None}
    if len(given) != 1:
        raise ValueError(
            "Exactly one of 'score_predictor', 'x0_predictor', 'epsilon_predictor' or "
            f"'velocity_predictor' must be provided, got {len(given)}."
        )
    ((kind, predictor),) = given.items()
    return kind, predictor


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
        elif kind == "velocity":
            score = s.velocity_to_score(y, x, t)
        else:
            score = y
        return s.drift(x, t) - k * s.diffusion(x, t) * score

    return denoiser


def _unit_signal(s, predictor: Predictor, kind: PredictionKind, k: float) -> Denoiser:
    """alpha = 1, so f = 0 and g^2 = 2 sigma' sigma: the rhs is one coefficient times a term.

    x0: -2k sigma'/sigma (x0 - x) (EDM ODE: (x - x0) / t); score: -2k sigma' sigma s;
    epsilon: 2k sigma' eps; velocity (v = sigma' eps): 2k v.
    """

    def from_x0(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x0 = predictor(x, t)
        t_bc = per_sample(t, x)  # (B, 1, ..., 1)
        return (-2 * k * s.sigma_dot(t_bc) / s.sigma(t_bc)) * (x0 - x)

    def from_score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        score = predictor(x, t)
        t_bc = per_sample(t, x)
        return (-2 * k * s.sigma_dot(t_bc) * s.sigma(t_bc)) * score

    def from_epsilon(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps = predictor(x, t)
        return (2 * k * s.sigma_dot(per_sample(t, x))) * eps

    def from_velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return 2 * k * predictor(x, t)

    if kind == "velocity" and k == 0.5:
        return predictor
    funcs = {"x0": from_x0, "score": from_score, "epsilon": from_epsilon}
    return funcs.get(kind, from_velocity)


def _general(s, predictor: Predictor, kind: PredictionKind, k: float) -> Denoiser:
    """(alpha'/alpha) x + w z, with w z = -k g^2 s written in the predicted quantity z.

    x0: z = alpha x0 - x, w = -k g^2 / sigma^2; score: z = s, w = -k g^2;
    epsilon: z = eps, w = k g^2 / sigma; velocity: f + 2k (v - f) (v itself for the ODE).
    """

    def coefficients(x: torch.Tensor, t: torch.Tensor):
        t_bc = per_sample(t, x)  # (B, 1, ..., 1)
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

    def from_velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        v = predictor(x, t)
        t_bc = per_sample(t, x)
        f_coef = s.alpha_dot(t_bc) / s.alpha(t_bc)
        return torch.addcmul(2 * k * v, (1 - 2 * k) * f_coef, x)

    if kind == "velocity" and k == 0.5:
        return predictor
    funcs = {"x0": from_x0, "score": from_score, "epsilon": from_epsilon}
    return funcs.get(kind, from_velocity)


class LinearSplit(NamedTuple):
    """``(bias_fn, bias_int_fn, slope_fn)`` = (a, A with A' = a, b) of F = a x + b N.

    Unpacks into the three functions; called, it is ``a(t)``, the single ``linear_fn`` of the
    reference's earlier development form (a solver given it still gets A and b from it).
    """

    bias_fn: TimeFn
    bias_int_fn: TimeFn
    slope_fn: TimeFn

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        return self.bias_fn(t)


def linear_parts(s, prediction_type: str) -> LinearSplit:
    """``(a, A, b)`` of the ODE rhs F = a x + b N for an N = ``prediction_type`` estimate."""

    def eps_bias(t: torch.Tensor) -> torch.Tensor:
        return s.alpha_dot(t) / s.alpha(t)

    def eps_bias_int(t: torch.Tensor) -> torch.Tensor:
        return torch.log(s.alpha(t))

    def eps_slope(t: torch.Tensor) -> torch.Tensor:
        return s.sigma_dot(t) - s.sigma(t) * eps_bias(t)

    def x0_bias(t: torch.Tensor) -> torch.Tensor:
        return s.sigma_dot(t) / s.sigma(t)

    def x0_bias_int(t: torch.Tensor) -> torch.Tensor:
        return torch.log(s.sigma(t))

    def x0_slope(t: torch.Tensor) -> torch.Tensor:
        return s.alpha_dot(t) - s.alpha(t) * x0_bias(t)

    def score_slope(t: torch.Tensor) -> torch.Tensor:
        return -s.sigma(t) * eps_slope(t)

    parts = {
        "x0": (x0_bias, x0_bias_int, x0_slope),
        "epsilon": (eps_bias, eps_bias_int, eps_slope),
        "score": (eps_bias, eps_bias_int, score_slope),
        "velocity": (torch.zeros_like, torch.zeros_like, torch.ones_like),
    }
    if prediction_type not in parts:
        raise ValueError(
            "prediction_type must be 'x0', 'score', 'epsilon' or 'velocity', "
            f"got {prediction_type!r}."
        )
    return LinearSplit(*parts[prediction_type])
