"""Rectified flow / flow matching schedule x_t = (1 - t) x0 + t eps on t in [0, 1] (Liu et al.
2022; Lipman et al. 2023), with the uniform and logit-normal training times of Esser et al. 2024."""

from __future__ import annotations

from typing import Any, Literal

import torch

from hpcdiff.diffusion._tensor import per_sample
from hpcdiff.diffusion.base import Denoiser, Predictor
from hpcdiff.diffusion.noise_schedulers._denoiser import pick_predictor
from hpcdiff.diffusion.noise_schedulers.linear_gaussian import LinearGaussianNoiseScheduler

TimeDistribution = Literal["uniform", "logit_normal"]


class RectifiedFlowNoiseScheduler(LinearGaussianNoiseScheduler):
    """Rectified flow: alpha(t) = 1 - t, sigma(t) = t, velocity v = eps - x0 (Liu et al. 2022).

    Sampling steps are uniform in u = t / (shift - (shift - 1) t) from ``t_max`` to 0, i.e. the
    time shift t = shift u / (1 + (shift - 1) u) of Esser et al. 2024, eq. 23 (``shift = 1``:
    linear in t). Training times are uniform on [t_min, t_max] or logit-normal,
    t = t_min + (t_max - t_min) sigmoid(m + s n), n ~ N(0, 1) (Esser et al. 2024, eq. 19).
    :meth:`loss_weight` is 1 / t^2, the x0-space weight for which the DSM losses equal the
    flow matching loss |v_hat - v|^2 (x0_hat - x0 = t (v - v_hat) on this path).

    The probability-flow ODE rhs has closed forms: v (velocity), (x - x0) / t (x0),
    (eps - x) / (1 - t) (epsilon), -(x + t s) / (1 - t) (score); the velocity and x0 forms
    are regular at t = 1, so sampling may start from pure noise there.

    Parameters
    ----------
    t_min, t_max : float
        Training-time range and first sampling time (0, 0.99); 0 <= t_min < t_max <= 1.
    time_distribution : {"uniform", "logit_normal"}
        Training-time law (default "uniform").
    logit_mean, logit_std : float
        m and s of the logit-normal law (0, 1).
    shift : float
        Sampling-grid time shift (1: linear; 3 is SD3's choice at 1024^2 pixels).

    >>> import torch
    >>> from hpcdiff.diffusion.noise_schedulers import RectifiedFlowNoiseScheduler
    >>> rf = RectifiedFlowNoiseScheduler(t_max=1.0)
    >>> rf.timesteps(4)
    tensor([1.0000, 0.7500, 0.5000, 0.2500, 0.0000])
    >>> x, v = torch.ones(1, 2), torch.full((1, 2), 0.5)
    >>> rf.get_denoiser(velocity_predictor=lambda x, t: v)(x, torch.ones(1))  # the ODE rhs is v
    tensor([[0.5000, 0.5000]])
    >>> rf.velocity_to_x0(v, x, torch.tensor([0.5]))  # x - t v
    tensor([[0.7500, 0.7500]])
    """

    def __init__(
        self,
        t_min: float = 0.0,
        t_max: float = 0.99,
        time_distribution: TimeDistribution = "uniform",
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        shift: float = 1.0,
    ) -> None:
        if not 0.0 <= t_min < t_max <= 1.0:
            raise ValueError(
                "t_min and t_max must satisfy 0 <= t_min < t_max <= 1, "
                f"got t_min={t_min}, t_max={t_max}."
            )
        if time_distribution not in ("uniform", "logit_normal"):
            raise ValueError(
                f"time_distribution must be 'uniform' or 'logit_normal', got {time_distribution!r}."
            )
        if logit_std <= 0:
            raise ValueError(f"logit_std must be positive, got {logit_std}.")
        if shift <= 0:
            raise ValueError(f"shift must be positive, got {shift}.")
        self.t_min = t_min
        self.t_max = t_max
        self.time_distribution = time_distribution
        self.logit_mean = logit_mean
        self.logit_std = logit_std
        self.shift = shift

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """sigma(t) = t."""
        return t

    def sigma_inv(self, sigma: torch.Tensor) -> torch.Tensor:
        """t = sigma."""
        return sigma

    def sigma_dot(self, t: torch.Tensor) -> torch.Tensor:
        """sigma'(t) = 1."""
        return torch.ones_like(t)

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        """alpha(t) = 1 - t."""
        return 1 - t

    def alpha_dot(self, t: torch.Tensor) -> torch.Tensor:
        """alpha'(t) = -1."""
        return -torch.ones_like(t)

    def timesteps(
        self,
        num_steps: int,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """t_i = shift u_i / (1 + (shift - 1) u_i), u_i = u_0 (1 - i / N); shape (N + 1,)."""
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        u_max = self.t_max / (self.shift - (self.shift - 1) * self.t_max)
        u = torch.linspace(u_max, 0.0, num_steps + 1, device=device, dtype=dtype)
        if self.shift == 1:
            return u
        return self.shift * u / (1 + (self.shift - 1) * u)

    def sample_time(
        self,
        N: int,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """Training times on [t_min, t_max]: uniform or logit-normal; shape (N,)."""
        if self.time_distribution == "uniform":
            u = torch.rand(N, device=device, dtype=dtype)
        else:
            n = torch.randn(N, device=device, dtype=dtype)
            u = torch.sigmoid(self.logit_mean + self.logit_std * n)
        return self.t_min + u * (self.t_max - self.t_min)

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        """lambda(t) = 1 / t^2 (velocity-matching weight in x0 space), 0 at t = 0; (N,)."""
        positive = t > 0
        return torch.where(positive, 1 / torch.where(positive, t, 1) ** 2, 0)

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
        """Closed-form probability-flow rhs (the velocity); the SDE needs t_max < 1.

        The reverse SDE drift f - g^2 s, f = -x / (1 - t), g^2 = 2t / (1 - t), is singular at
        t = 1, so ``denoising_type="sde"`` is refused when ``t_max >= 1``.
        """
        kind, predictor = pick_predictor(
            score_predictor, x0_predictor, epsilon_predictor, velocity_predictor
        )
        if denoising_type == "sde" and self.t_max >= 1.0:
            raise ValueError(
                "denoising_type='sde' is singular at t = 1 on the rectified-flow path (drift "
                f"-x / (1 - t)), but t_max={self.t_max}; use t_max < 1 (e.g. 0.99)."
            )
        if denoising_type != "ode":
            return super().get_denoiser(
                **{f"{kind}_predictor": predictor}, denoising_type=denoising_type
            )
        return _flow_rhs(kind, predictor)


def _flow_rhs(kind: str, predictor: Predictor) -> Denoiser:
    """Velocity field E[eps - x0 | x_t] written in the predicted quantity."""
    if kind == "velocity":
        return predictor

    def from_x0(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (x - predictor(x, t)) / per_sample(t, x)

    def from_epsilon(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (predictor(x, t) - x) / (1 - per_sample(t, x))

    def from_score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t_bc = per_sample(t, x)
        return torch.addcmul(x, t_bc, predictor(x, t)) / (t_bc - 1)

    return {"x0": from_x0, "epsilon": from_epsilon, "score": from_score}[kind]


class FlowMatchingNoiseScheduler(RectifiedFlowNoiseScheduler):
    """Conditional optimal-transport flow matching path (Lipman et al. 2023, eq. 23 with
    sigma_min = 0): the rectified-flow schedule starting from pure noise, ``t_max = 1``.

    Same parameters as :class:`RectifiedFlowNoiseScheduler`; velocity and x0 predictors sample
    from t = 1; epsilon/score predictors and the SDE need ``t_max < 1``.

    >>> from hpcdiff.diffusion.noise_schedulers import FlowMatchingNoiseScheduler
    >>> FlowMatchingNoiseScheduler().timesteps(2)
    tensor([1.0000, 0.5000, 0.0000])
    """

    def __init__(
        self,
        t_min: float = 0.0,
        t_max: float = 1.0,
        time_distribution: TimeDistribution = "uniform",
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        shift: float = 1.0,
    ) -> None:
        super().__init__(t_min, t_max, time_distribution, logit_mean, logit_std, shift)
