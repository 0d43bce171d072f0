"""Second-order Heun (explicit trapezoidal / midpoint family) solver for the diffusion ODE."""

from __future__ import annotations

import torch

from hpcdiff.diffusion.base import Denoiser
from hpcdiff.diffusion.samplers.base import NoiseFn, Solver, check_alpha, heun_weights, per_sample


def heun_step(
    denoiser: Denoiser, alpha: float, x: torch.Tensor, t_cur: torch.Tensor, t_next: torch.Tensor
) -> torch.Tensor:
    """Generic 2nd-order Runge-Kutta step (Karras et al. 2022, Algorithm 1 with ``alpha``):
    ``x' = x + alpha h d``, ``x_next = x + h ((1 - 1/(2 alpha)) d + 1/(2 alpha) d')``, where
    ``d = F(x, t)``, ``d' = F(x', t + alpha h)``; plain Euler where ``t_next = 0``."""
    t_cur = t_cur.contiguous()
    t_cur_bc, t_next_bc = per_sample(t_cur, x), per_sample(t_next, x)  # (B, 1, ..., 1)
    h = t_next_bc - t_cur_bc
    d_cur = denoiser(x, t_cur)
    x_prime = torch.addcmul(x, alpha * h, d_cur)
    # The corrector is still evaluated where t' = 0 (at t_cur instead, as the reference
    # does), so the number of denoiser calls never depends on the values in the grid.
    t_prime = (t_cur_bc + alpha * h).reshape(x.shape[0])
    d_prime = denoiser(x_prime, torch.where(t_prime == 0, t_cur, t_prime))
    w_cur, w_prime = heun_weights(alpha, t_next_bc)
    x_next = torch.addcmul(x, h * w_cur, d_cur)
    return x_next.addcmul_(h * w_prime, d_prime)


class HeunSolver(Solver):
    """Heun's 2nd-order method; ``alpha = 1`` is the trapezoidal rule (EDM Algorithm 1),
    ``alpha = 1/2`` the midpoint rule. Two denoiser calls per step, Euler on the last step
    to ``t = 0``.

    Parameters
    ----------
    denoiser : Denoiser
        ``F(x, t)``, the ODE right-hand side (e.g. from ``NoiseScheduler.get_denoiser``).
    alpha : float
        Position of the intermediate evaluation, in (0, 1]. Default 1.
    noise_fn : callable, optional
        Accepted for the common solver signature; this solver draws no noise.

    >>> import torch
    >>> from hpcdiff.diffusion.samplers import HeunSolver
    >>> solver = HeunSolver(lambda x, t: -x)  # dx/dt = -x
    >>> solver.step(torch.ones(1, 2), torch.tensor([1.0]), torch.tensor([0.5]))
    tensor([[1.6250, 1.6250]])
    """

    def __init__(
        self, denoiser: Denoiser, alpha: float = 1.0, *, noise_fn: NoiseFn | None = None
    ) -> None:
        self.denoiser = denoiser
        self.noise_fn = noise_fn
        self.alpha = check_alpha(alpha)

    def step(self, x: torch.Tensor, t_cur: torch.Tensor, t_next: torch.Tensor) -> torch.Tensor:
        """Advance ``x`` (B, *) from ``t_cur`` (B,) to ``t_next`` (B,)."""
        return heun_step(self.denoiser, self.alpha, x, t_cur, t_next)
