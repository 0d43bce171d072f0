"""First-order stochastic sampler of the EDM paper (churn + Euler step)."""

from __future__ import annotations

import torch

from hpcdiff.diffusion.samplers._churn import EDMChurn
from hpcdiff.diffusion.samplers.base import Solver, per_sample
from hpcdiff.diffusion.samplers.euler import euler_step


class EDMStochasticEulerSolver(EDMChurn, Solver):
    """Karras et al. 2022, Algorithm 2 without the 2nd-order correction: raise the noise
    level ``t -> t_hat`` (churn), ``x_hat = x + S_noise sqrt(t_hat^2 - t^2)
    sqrt(g^2 / 2t) eps``, then ``x_next = x_hat + (t_next - t_hat) F(x_hat, t_hat)``.

    The denoiser is the ODE rhs: churn is ad-hoc noise injection, not an SDE solver. With
    ``S_churn = 0`` this is :class:`EulerSolver` (noise is still drawn, scaled by 0).

    Parameters
    ----------
    denoiser : Denoiser
        ``F(x, t)``, the probability-flow ODE right-hand side.
    S_churn, S_min, S_max, S_noise : float
        Churn amount, range of ``sigma(t)`` where it applies, and noise scale.
        Defaults 0, 0, inf, 1.
    num_steps : int
        Step count ``N`` in ``gamma = min(S_churn / N, sqrt(2) - 1)``. Default 18.
    sigma_fn, sigma_inv_fn : callable, optional
        ``t -> sigma(t)`` and its inverse, to apply churn in noise-level space (both or
        neither; default identity).
    diffusion_fn : callable, optional
        ``(x, t) -> g^2(x, t)`` scaling the noise; default ``2 t`` (EDM).
    generator : torch.Generator, optional
        Source of the injected noise; default the global generator (``randn_like``).
    noise_fn : callable, optional
        ``x -> eps``, fresh standard normal noise like ``x``; replaces ``generator`` (give
        one or neither), e.g. noise that does not depend on the domain decomposition.

    >>> import torch
    >>> from hpcdiff.diffusion.samplers import EDMStochasticEulerSolver
    >>> solver = EDMStochasticEulerSolver(lambda x, t: -x, S_churn=40, num_steps=18)
    >>> solver.step(torch.ones(1, 3, 8, 8), torch.tensor([1.0]), torch.tensor([0.5])).shape
    torch.Size([1, 3, 8, 8])
    """

    def step(self, x: torch.Tensor, t_cur: torch.Tensor, t_next: torch.Tensor) -> torch.Tensor:
        """Churn then Euler: ``x`` (B, *) from ``t_cur`` (B,) to ``t_next`` (B,)."""
        t_cur = t_cur.contiguous()
        t_cur_bc = per_sample(t_cur, x)  # (B, 1, ..., 1)
        _, _, t_hat_bc = self.raise_noise_level(t_cur_bc)
        # The variance increment is taken in time space here (the Heun variant uses noise
        # levels); both agree when sigma(t) = t.
        x_hat = self.perturb(x, t_cur, t_cur_bc, t_hat_bc**2 - t_cur_bc**2)
        return euler_step(self.denoiser, x_hat, t_hat_bc.reshape(x.shape[0]), t_next)
