"""The Solver protocol and the small tensor helpers shared by the solvers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch

from hpcdiff.diffusion._tensor import per_sample

__all__ = ["NoiseFn", "Solver", "check_alpha", "heun_weights", "per_sample"]

NoiseFn = Callable[[torch.Tensor], torch.Tensor]
"""``x -> eps``: fresh standard normal noise shaped like ``x`` (B, *), like EDM's
``randn_like``. Every solver takes one as ``noise_fn=``; the stochastic ones draw all their
noise from it (and scale the returned tensor in place), the deterministic ones draw none."""


@runtime_checkable
class Solver(Protocol):
    """One integration step ``x_{n-1} = Step(F(x_n, t_n); x_n, t_n, t_{n-1})`` of a sampler.

    ``F`` is the denoiser the solver was built with (e.g. the probability-flow ODE rhs).
    Shapes: ``x`` (B, *), ``t_cur`` and ``t_next`` (B,).

    >>> import torch
    >>> from hpcdiff.diffusion.samplers import Solver
    >>> class SimpleEuler:
    ...     def __init__(self, denoiser):
    ...         self.denoiser = denoiser
    ...     def step(self, x, t_cur, t_next):
    ...         return x + (t_next - t_cur) * self.denoiser(x, t_cur)
    >>> isinstance(SimpleEuler(lambda x, t: -x), Solver)
    True
    """

    def step(self, x: torch.Tensor, t_cur: torch.Tensor, t_next: torch.Tensor) -> torch.Tensor:
        """Advance ``x`` (B, *) from time ``t_cur`` (B,) to ``t_next`` (B,)."""
        ...


def check_alpha(alpha: float) -> float:
    """Validate the Heun predictor fraction: ``alpha`` must lie in (0, 1]."""
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    return alpha


def heun_weights(alpha: float, t_next_bc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrector weights ``(1 - 1/(2 alpha), 1/(2 alpha))``, or Euler's ``(1, 0)`` where the
    step ends at ``t_next = 0`` (the rhs is singular there), as (B, 1, ..., 1) tensors."""
    w_prime = 1.0 / (2.0 * alpha)
    heun = (t_next_bc != 0).to(t_next_bc.dtype)  # (B, 1, ..., 1): 1 = second order
    return 1.0 - w_prime * heun, w_prime * heun
