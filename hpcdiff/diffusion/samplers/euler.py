"""First-order (explicit Euler) solver for the diffusion ODE."""

from __future__ import annotations

import torch

from hpcdiff.diffusion.base import Denoiser
from hpcdiff.diffusion.samplers.base import NoiseFn, Solver, per_sample


def euler_step(
    denoiser: Denoiser, x: torch.Tensor, t_cur: torch.Tensor, t_next: torch.Tensor
) -> torch.Tensor:
    """Explicit Euler step ``x_next = x + (t_next - t_cur) F(x, t_cur)`` in one fused pass."""
    t_cur = t_cur.contiguous()
    h = per_sample(t_next, x) - per_sample(t_cur, x)  # (B, 1, ..., 1)
    return torch.addcmul(x, h, denoiser(x, t_cur))


class EulerSolver(Solver):
    """Explicit Euler step ``x_{n-1} = x_n + (t_{n-1} - t_n) F(x_n, t_n)``; one denoiser call.

    Parameters
    ----------
    denoiser : Denoiser
        ``F(x, t)``, the ODE right-hand side (e.g. from ``NoiseScheduler.get_denoiser``).
    noise_fn : callable, optional
        Accepted for the common solver signature; this solver draws no noise.

    >>> import torch
    >>> from hpcdiff.diffusion.samplers import EulerSolver
    >>> solver = EulerSolver(lambda x, t: -x)  # dx/dt = -x
    >>> solver.step(torch.ones(1, 2), torch.tensor([1.0]), torch.tensor([0.5]))
    tensor([[1.5000, 1.5000]])
    """

    def __init__(self, denoiser: Denoiser, *, noise_fn: NoiseFn | None = None) -> None:
        self.denoiser = denoiser
        self.noise_fn = noise_fn

    def step(self, x: torch.Tensor, t_cur: torch.Tensor, t_next: torch.Tensor) -> torch.Tensor:
        """Advance ``x`` (B, *) from ``t_cur`` (B,) to ``t_next`` (B,)."""
        return euler_step(self.denoiser, x, t_cur, t_next)
