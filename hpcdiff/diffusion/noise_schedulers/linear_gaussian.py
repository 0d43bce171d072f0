"""Linear-Gaussian schedules x_t = alpha(t) x_0 + sigma(t) eps (Song et al. 2021, Karras et al.
2022 eq. 4): the shared forward process, prediction conversions and reverse ODE/SDE factory."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Literal

import torch

from hpcdiff.diffusion._tensor import per_sample
from hpcdiff.diffusion.base import Denoiser, Predictor, PredictorType
from hpcdiff.diffusion.noise_schedulers._denoiser import (
    LinearSplit,
    build_denoiser,
    linear_parts,
    pick_predictor,
)
from hpcdiff.diffusion.noise_schedulers.base import NoiseScheduler


class LinearGaussianNoiseScheduler(ABC, NoiseScheduler):
    """Abstract linear-Gaussian schedule x_t = alpha(t) x_0 + sigma(t) eps, eps ~ N(0, I).

    Subclasses define ``sigma``, ``sigma_inv``, ``sigma_dot``, ``alpha``, ``alpha_dot``,
    ``timesteps``, ``sample_time`` and ``loss_weight``. The drift f(x, t) = (alpha'/alpha) x,
    the squared diffusion g^2(t) = 2 sigma' sigma - 2 (alpha'/alpha) sigma^2 (Karras et al.
    2022, eq. 4 solved for f, g), the x0/score/epsilon/velocity conversions, ``add_noise``,
    ``init_latents`` and the probability-flow ODE / reverse SDE rhs of ``get_denoiser`` follow.

    >>> import torch
    >>> from hpcdiff.diffusion.noise_schedulers import LinearGaussianNoiseScheduler
    >>> class MyScheduler(LinearGaussianNoiseScheduler):
    ...     def sigma(self, t): return t
    ...     def sigma_inv(self, sigma): return sigma
    ...     def sigma_dot(self, t): return torch.ones_like(t)
    ...     def alpha(self, t): return torch.ones_like(t)
    ...     def alpha_dot(self, t): return torch.zeros_like(t)
    ...     def timesteps(self, num_steps, *, device=None, dtype=None): ...
    ...     def sample_time(self, N, *, device=None, dtype=None): ...
    ...     def loss_weight(self, t): ...
    >>> denoiser = MyScheduler().get_denoiser(x0_predictor=lambda x, t: torch.zeros_like(x))
    >>> denoiser(torch.full((2, 3), 4.0), torch.tensor([1.0, 2.0]))  # (x - x0) / t
    tensor([[4., 4., 4.],
            [2., 2., 2.]])
    """

    @abstractmethod
    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Noise level sigma(t), elementwise."""

    @abstractmethod
    def sigma_inv(self, sigma: torch.Tensor) -> torch.Tensor:
        """Diffusion time t with sigma(t) = ``sigma``, elementwise."""

    @abstractmethod
    def sigma_dot(self, t: torch.Tensor) -> torch.Tensor:
        """Time derivative d sigma / dt, elementwise."""

    @abstractmethod
    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        """Signal scale alpha(t), elementwise."""

    @abstractmethod
    def alpha_dot(self, t: torch.Tensor) -> torch.Tensor:
        """Time derivative d alpha / dt, elementwise."""

    @abstractmethod
    def timesteps(
        self,
        num_steps: int,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """Decreasing sampling times, shape (num_steps + 1,), last element 0."""

    @abstractmethod
    def sample_time(
        self,
        N: int,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """Draw ``N`` training diffusion times, shape (N,)."""

    @abstractmethod
    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        """DSM loss weight lambda(t) for an x0-predictor, shape (N,) or (N, C)."""

    # SDE coefficients.

    def drift(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Drift f(x, t) = alpha'(t) / alpha(t) * x of the forward SDE; same shape as ``x``."""
        t = per_sample(t, x)
        return (self.alpha_dot(t) / self.alpha(t)) * x

    def diffusion(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Squared diffusion g^2(t) = 2 sigma' sigma - 2 (alpha'/alpha) sigma^2, (B, 1, ..., 1)."""
        t = per_sample(t, x)
        sigma = self.sigma(t)
        return 2 * self.sigma_dot(t) * sigma - 2 * (self.alpha_dot(t) / self.alpha(t)) * sigma**2

    # Conversions between x0, score and epsilon predictions (Tweedie: score = -eps / sigma).

    def x0_to_score(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Score of p(x_t) from an x0 estimate: (alpha x0 - x_t) / sigma^2."""
        t = per_sample(t, x0)
        return (self.alpha(t) * x0 - x_t) / self.sigma(t) ** 2

    def score_to_x0(self, score: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x0 estimate from a score: (x_t + sigma^2 score) / alpha (Tweedie's formula)."""
        t = per_sample(t, score)
        return (x_t + self.sigma(t) ** 2 * score) / self.alpha(t)

    def epsilon_to_score(self, epsilon: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Score from a noise estimate: -epsilon / sigma."""
        return -epsilon / self.sigma(per_sample(t, epsilon))

    def score_to_epsilon(self, score: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Noise estimate from a score: -sigma * score."""
        return -self.sigma(per_sample(t, score)) * score

    def epsilon_to_x0(
        self, epsilon: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """x0 estimate from a noise estimate: (x_t - sigma epsilon) / alpha."""
        t = per_sample(t, epsilon)
        return (x_t - self.sigma(t) * epsilon) / self.alpha(t)

    def x0_to_epsilon(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Noise estimate from an x0 estimate: (x_t - alpha x0) / sigma."""
        t = per_sample(t, x0)
        return (x_t - self.alpha(t) * x0) / self.sigma(t)

    # Velocity v = dx_t/dt = alpha' x0 + sigma' eps (flow matching; Lipman et al. 2023).

    def x0_to_velocity(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Velocity from an x0 estimate: (sigma'/sigma) x_t + (alpha' - alpha sigma'/sigma) x0."""
        t = per_sample(t, x0)
        rate = self.sigma_dot(t) / self.sigma(t)
        return rate * x_t + (self.alpha_dot(t) - self.alpha(t) * rate) * x0

    def velocity_to_x0(
        self, velocity: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """x0 estimate from a velocity: (sigma' x_t - sigma v) / (sigma' alpha - alpha' sigma)."""
        t = per_sample(t, velocity)
        sigma, sigma_dot = self.sigma(t), self.sigma_dot(t)
        det = sigma_dot * self.alpha(t) - self.alpha_dot(t) * sigma
        return (sigma_dot * x_t - sigma * velocity) / det

    def epsilon_to_velocity(
        self, epsilon: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """Velocity from a noise estimate: (alpha'/alpha) x_t + (sigma' - sigma alpha'/alpha) e."""
        t = per_sample(t, epsilon)
        rate = self.alpha_dot(t) / self.alpha(t)
        return rate * x_t + (self.sigma_dot(t) - self.sigma(t) * rate) * epsilon

    def velocity_to_epsilon(
        self, velocity: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """Noise from a velocity: (alpha v - alpha' x_t) / (alpha sigma' - alpha' sigma)."""
        t = per_sample(t, velocity)
        alpha, alpha_dot = self.alpha(t), self.alpha_dot(t)
        det = alpha * self.sigma_dot(t) - alpha_dot * self.sigma(t)
        return (alpha * velocity - alpha_dot * x_t) / det

    def score_to_velocity(
        self, score: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """Velocity from a score, through epsilon = -sigma score."""
        return self.epsilon_to_velocity(self.score_to_epsilon(score, t), x_t, t)

    def velocity_to_score(
        self, velocity: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """Score from a velocity, through score = -epsilon / sigma."""
        return self.epsilon_to_score(self.velocity_to_epsilon(velocity, x_t, t), t)

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        """Signal-to-noise ratio alpha(t)^2 / sigma(t)^2 (Kingma et al. 2021), elementwise."""
        return (self.alpha(t) / self.sigma(t)) ** 2

    def get_linear_denoiser(self, prediction_type: PredictorType = "x0") -> LinearSplit:
        """Split the probability-flow ODE rhs as F(x, t) = a(t) x + b(t) N(x, t).

        N is the ``prediction_type`` estimate; returns ``(bias_fn, bias_int_fn, slope_fn)``
        = (a, A with A' = a, b), elementwise in t. x0: a = sigma'/sigma, A = log sigma,
        b = alpha' - alpha sigma'/sigma; epsilon: a = alpha'/alpha, A = log alpha,
        b = sigma' - sigma alpha'/alpha; score: a, A as epsilon, b = -sigma (sigma' - sigma
        alpha'/alpha); velocity: a = A = 0, b = 1. Exponential integrators treat a exactly.
        The result also acts as ``linear_fn``: called, it is a(t).
        """
        return linear_parts(self, prediction_type)

    # Training and sampling entry points.

    def get_denoiser(
        self,
        *,
        score_predictor: Predictor | None = None,
        x0_predictor: Predictor | None = None,
        epsilon_predictor: Predictor | None = None,
        velocity_predictor: Predictor | None = None,
        denoising_type: Literal["ode", "sde"] = "ode",
        **kwargs: Any,
    ) -> Denoiser:
        """Reverse-process rhs from exactly one predictor (Song et al. 2021, eqs. 6 and 13).

        ODE: dx/dt = f(x, t) - 1/2 g^2(t) s(x, t); SDE drift: f(x, t) - g^2(t) s(x, t), the
        g dW term being left to the solver. ``s`` is the score, converted from an x0, epsilon
        or velocity prediction when one of those is given (the ODE rhs is the velocity
        itself). Extra keyword arguments are ignored.
        """
        kind, predictor = pick_predictor(
            score_predictor, x0_predictor, epsilon_predictor, velocity_predictor
        )
        if denoising_type not in ("ode", "sde"):
            raise ValueError(f"denoising_type must be 'ode' or 'sde', got {denoising_type!r}.")
        k = 0.5 if denoising_type == "ode" else 1.0
        # Subclasses that override f, g^2 or a conversion get them called term by term.
        folded = all(
            getattr(type(self), name) is getattr(LinearGaussianNoiseScheduler, name)
            for name in (
                "drift", "diffusion", "x0_to_score", "epsilon_to_score", "velocity_to_score"
            )
        )  # fmt: skip
        return build_denoiser(self, predictor, kind, k, folded=folded)

    def add_noise(self, x0: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        """Forward process x_t = alpha(t) x0 + sigma(t) eps with eps ~ N(0, I); (B, *)."""
        t = per_sample(time, x0)
        eps = torch.randn_like(x0)
        return self.alpha(t) * x0 + self.sigma(t) * eps

    def init_latents(
        self,
        spatial_shape: tuple[int, ...],
        tN: torch.Tensor,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """Initial state x_N = sigma(t_N) eps, eps ~ N(0, I); shape (B, *spatial_shape).

        ``device`` defaults to the device of ``tN``; ``dtype`` to torch's default dtype.
        """
        device = tN.device if device is None else device
        eps = torch.randn(tN.shape[0], *spatial_shape, device=device, dtype=dtype)
        return self.sigma(per_sample(tN, eps)) * eps
