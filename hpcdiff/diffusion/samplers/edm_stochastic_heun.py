"""Second-order stochastic sampler of the EDM paper (churn + Heun step)."""

from __future__ import annotations

import torch

from hpcdiff.diffusion.base import Denoiser
from hpcdiff.diffusion.samplers._churn import DiffusionFn, EDMChurn, TimeFn, churn_args
from hpcdiff.diffusion.samplers.base import NoiseFn, Solver, check_alpha, per_sample
from hpcdiff.diffusion.samplers.heun import heun_step


class EDMStochasticHeunSolver(EDMChurn, Solver):
    """Karras et al. 2022, Algorithm 2: raise the noise level ``t -> t_hat`` (churn),
    ``x_hat = x + S_noise sqrt(sigma_hat^2 - sigma^2) sqrt(g^2 / 2t) eps``, then one
    :class:`HeunSolver` step from ``(x_hat, t_hat)`` to ``t_next``.

    The denoiser is the ODE rhs: churn is ad-hoc noise injection, not an SDE solver. With
    ``S_churn = 0`` this is :class:`HeunSolver` (noise is still drawn, scaled by 0).

    Parameters
    ----------
    denoiser : Denoiser
        ``F(x, t)``, the probability-flow ODE right-hand side.
    alpha : float
        Heun intermediate-point fraction in (0, 1]. Default 1.
    S_churn, S_min, S_max, S_noise, num_steps, sigma_fn, sigma_inv_fn, diffusion_fn
        The churn, as in :class:`EDMStochasticEulerSolver` (defaults 0, 0, inf, 1, 18,
        identity, identity, ``2 t``).
    generator, noise_fn : optional
        Source of the injected noise (one or neither), as in
        :class:`EDMStochasticEulerSolver`; default the global generator.

    >>> import torch
    >>> from hpcdiff.diffusion.samplers import EDMStochasticHeunSolver
    >>> solver = EDMStochasticHeunSolver(lambda x, t: -x, S_churn=40, num_steps=18)
    >>> solver.step(torch.ones(1, 3, 8, 8), torch.tensor([1.0]), torch.tensor([0.5])).shape
    torch.Size([1, 3, 8, 8])
    """

    def __init__(
        self,
        denoiser: Denoiser,
        alpha: float = 1.0,
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
        self.alpha = check_alpha(alpha)
        super().__init__(denoiser, **churn_args(locals()))

    def step(self, x: torch.Tensor, t_cur: torch.Tensor, t_next: torch.Tensor) -> torch.Tensor:
        """Churn then Heun: ``x`` (B, *) from ``t_cur`` (B,) to ``t_next`` (B,)."""
        t_cur = t_cur.contiguous()
        t_cur_bc = per_sample(t_cur, x)  # (B, 1, ..., 1)
        sigma, sigma_hat, t_hat_bc = self.raise_noise_level(t_cur_bc)
        x_hat = self.perturb(x, t_cur, t_cur_bc, sigma_hat**2 - sigma**2)
        return heun_step(self.denoiser, self.alpha, x_hat, t_hat_bc.reshape(x.shape[0]), t_next)
