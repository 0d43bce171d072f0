"""Exponential Euler (DDIM / DPM-Solver-1 family) and its EDM-churn stochastic variant."""

from __future__ import annotations

import math
from typing import Any

import torch

from hpcdiff.diffusion.base import Denoiser
from hpcdiff.diffusion.samplers._churn import DiffusionFn, EDMChurn, TimeFn, churn_args
from hpcdiff.diffusion.samplers._semilinear import SemiLinear, linear_split_options
from hpcdiff.diffusion.samplers.base import NoiseFn, Solver, per_sample


def _exponential_euler(
    split: SemiLinear, denoiser: Denoiser, x: torch.Tensor, t_cur: torch.Tensor, t_next_bc
) -> torch.Tensor:
    """x_next = E x + J N(x, t_cur) from (x, t_cur (B,)) to t_next_bc (B, 1, ..., 1)."""
    t_cur = t_cur.contiguous()
    q, p = split.step_coefficients(per_sample(t_cur, x), t_next_bc)  # (B, 1, ..., 1)
    return torch.mul(x, q).addcmul_(p, denoiser(x, t_cur))


class ExponentialEulerSolver(Solver):
    """Exponential Euler for F(x, t) = a(t) x + b(t) N(x, t) (Hochbruck & Ostermann 2010):
    x_next = exp(A(t_next) - A(t_cur)) x + J N(x, t_cur),
    J = int_{t_cur}^{t_next} exp(A(t_next) - A(s)) b(s) ds, with A' = a; one call per step.

    The linear part is integrated exactly and only N is frozen. With the x0 split of a
    linear-Gaussian schedule (``noise_scheduler.get_linear_denoiser(prediction_type="x0")``)
    this is DDIM / DPM-Solver-1 (Song et al. 2021; Lu et al. 2022); without a split
    (a = 0, b = 1) it is explicit Euler. :func:`sample` passes the scheduler's x0 split when
    the solver is chosen by name.

    Parameters
    ----------
    denoiser : Denoiser
        ``F(x, t)``, the probability-flow ODE rhs.
    bias_fn, bias_int_fn : callable, optional
        a(t) and its antiderivative A(t), elementwise in t; both or neither (default a = 0).
    slope_fn : callable, optional
        b(t) (default 1); b = 0 drops the N term.
    noise_fn : callable, optional
        Accepted for the common solver signature; this solver draws no noise.

    >>> import torch
    >>> from hpcdiff.diffusion.noise_schedulers import EDMNoiseScheduler
    >>> from hpcdiff.diffusion.samplers import ExponentialEulerSolver
    >>> edm = EDMNoiseScheduler()
    >>> bias, bias_int, slope = edm.get_linear_denoiser(prediction_type="x0")
    >>> solver = ExponentialEulerSolver(
    ...     edm.get_denoiser(x0_predictor=lambda x, t: torch.zeros_like(x)),
    ...     bias_fn=bias, bias_int_fn=bias_int, slope_fn=slope)
    >>> solver.step(torch.ones(1, 2), torch.tensor([2.0]), torch.tensor([0.5]))  # DDIM: x t'/t
    tensor([[0.2500, 0.2500]])
    """

    def __init__(
        self,
        denoiser: Denoiser,
        bias_fn: TimeFn | None = None,
        bias_int_fn: TimeFn | None = None,
        slope_fn: TimeFn | None = None,
        *,
        noise_fn: NoiseFn | None = None,
    ) -> None:
        self.denoiser = denoiser
        self.noise_fn = noise_fn
        self.split = SemiLinear(bias_fn, bias_int_fn, slope_fn)

    @staticmethod
    def scheduler_defaults(noise_scheduler: Any) -> dict[str, Any]:
        """Options :func:`sample` adds when built by name: the scheduler's x0 split."""
        return linear_split_options(noise_scheduler)

    def step(self, x: torch.Tensor, t_cur: torch.Tensor, t_next: torch.Tensor) -> torch.Tensor:
        """Advance ``x`` (B, *) from ``t_cur`` (B,) to ``t_next`` (B,)."""
        return _exponential_euler(self.split, self.denoiser, x, t_cur, per_sample(t_next, x))


class EDMStochasticExponentialEulerSolver(EDMChurn, Solver):
    """Churn (Karras et al. 2022, Algorithm 2) + exponential Euler + optional renoising.

    Raise the noise level t -> t_hat and add S_noise sqrt(sigma_hat^2 - sigma^2) sqrt(g^2/2t)
    fresh noise, take an :class:`ExponentialEulerSolver` step from (x_hat, t_hat) to t_dn
    with sigma(t_dn) = sqrt(1 - r^2) sigma(t_next), then x_next = alpha(t_next)/alpha(t_dn)
    x + r sigma(t_next) eps, r = ``renoise``: r = 0 is churn only (no second draw), r = 1 the
    re-noising "stochastic DDIM" of distilled / consistency models (Song et al. 2023).
    The denoiser is the ODE rhs; this is noise injection, not an SDE solver. On bounded-time
    schedules (VP, rectified flow) keep (1 + gamma) sigma in range with ``S_max``.

    Parameters
    ----------
    denoiser : Denoiser
        ``F(x, t)``, the probability-flow ODE rhs.
    bias_fn, bias_int_fn, slope_fn : callable, optional
        The split of :class:`ExponentialEulerSolver`.
    S_churn, S_min, S_max, S_noise, num_steps : float, int
        EDM churn settings (0, 0, inf, 1, 18), as in :class:`EDMStochasticEulerSolver`.
    sigma_fn, sigma_inv_fn : callable, optional
        Noise level of a time and its inverse (both or neither; default identity).
    diffusion_fn : callable, optional
        ``(x, t) -> g^2`` scaling the churn noise (default 2t).
    alpha_fn : callable, optional
        Signal scale alpha(t) used by renoising (default 1).
    renoise : float
        Fraction r in [0, 1] of the arrival noise drawn afresh (default 0).
    generator : torch.Generator, optional
        Source of all injected noise (default: the global generator).
    noise_fn : callable, optional
        ``x -> eps``, fresh standard normal noise like ``x`` for every draw (churn and
        renoise); replaces ``generator`` (give one or neither).

    >>> import torch
    >>> from hpcdiff.diffusion.samplers import EDMStochasticExponentialEulerSolver
    >>> solver = EDMStochasticExponentialEulerSolver(lambda x, t: -x, S_churn=40, renoise=0.5)
    >>> solver.step(torch.ones(1, 3, 8, 8), torch.tensor([1.0]), torch.tensor([0.5])).shape
    torch.Size([1, 3, 8, 8])
    """

    def __init__(
        self,
        denoiser: Denoiser,
        bias_fn: TimeFn | None = None,
        bias_int_fn: TimeFn | None = None,
        slope_fn: TimeFn | None = None,
        S_churn: float = 0,
        S_min: float = 0,
        S_max: float = float("inf"),
        S_noise: float = 1,
        num_steps: int = 18,
        sigma_fn: TimeFn | None = None,
        sigma_inv_fn: TimeFn | None = None,
        diffusion_fn: DiffusionFn | None = None,
        alpha_fn: TimeFn | None = None,
        renoise: float = 0,
        *,
        generator: torch.Generator | None = None,
        noise_fn: NoiseFn | None = None,
    ) -> None:
        if not 0 <= renoise <= 1:
            raise ValueError(f"renoise must be in [0, 1], got {renoise}")
        super().__init__(denoiser, **churn_args(locals()))
        self.split = SemiLinear(bias_fn, bias_int_fn, slope_fn)
        self.alpha_fn = alpha_fn
        self.renoise = renoise
        self._kept = math.sqrt(1 - renoise**2)

    @staticmethod
    def scheduler_defaults(noise_scheduler: Any) -> dict[str, Any]:
        """Options :func:`sample` adds when built by name: the x0 split, and sigma(t), its
        inverse and alpha(t) of a linear-Gaussian scheduler."""
        options = linear_split_options(noise_scheduler)
        if options:
            options["sigma_fn"] = noise_scheduler.sigma
            options["sigma_inv_fn"] = noise_scheduler.sigma_inv
            options["alpha_fn"] = noise_scheduler.alpha
        return options

    def step(self, x: torch.Tensor, t_cur: torch.Tensor, t_next: torch.Tensor) -> torch.Tensor:
        """Churn, exponential Euler, renoise: ``x`` (B, *) from ``t_cur`` to ``t_next`` (B,)."""
        t_cur = t_cur.contiguous()
        t_cur_bc, t_next_bc = per_sample(t_cur, x), per_sample(t_next, x)  # (B, 1, ..., 1)
        sigma, sigma_hat, t_hat_bc = self.raise_noise_level(t_cur_bc)
        x_hat = self.perturb(x, t_cur, t_cur_bc, sigma_hat**2 - sigma**2)
        if self.renoise == 0:
            t_dn_bc = t_next_bc
        else:  # sigma(t_dn) = sqrt(1 - r^2) sigma(t_next); t_dn = t_next where that is 0
            sigma_next = self.sigma_fn(t_next_bc)
            t_dn_bc = self.sigma_inv_fn(self._kept * sigma_next)
            t_dn_bc = torch.where(sigma_next == 0, t_next_bc, t_dn_bc)
        t_hat = t_hat_bc.reshape(x.shape[0])
        x_next = _exponential_euler(self.split, self.denoiser, x_hat, t_hat, t_dn_bc)
        if self.renoise == 0:
            return x_next
        if self.alpha_fn is not None:
            x_next = x_next * (self.alpha_fn(t_next_bc) / self.alpha_fn(t_dn_bc))
        noise_scale = self.renoise * self.sigma_fn(t_next_bc)
        return x_next.addcmul_(noise_scale, self._randn(x))
