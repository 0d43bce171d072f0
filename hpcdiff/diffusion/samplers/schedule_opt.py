"""Fixed sampling grids learned from an adaptive run: error-equidistributing schedules for
cheap, deterministic (and compilable) production sampling."""

from __future__ import annotations

import math

import numpy as np
import torch

from hpcdiff.diffusion.base import Denoiser
from hpcdiff.diffusion.samplers.adaptive import AdaptiveSolver, Method


def optimize_schedule(
    denoiser: Denoiser,
    xN: torch.Tensor,
    t_max: float,
    t_min: float,
    *,
    num_steps: int | None = None,
    rtol: float = 1e-3,
    atol: float = 1e-3,
    method: Method = "bosh3",
) -> torch.Tensor:
    """Grid t_max = tau_0 > ... > tau_{N-1} = t_min > tau_N = 0 equidistributing local error.

    :class:`AdaptiveSolver` integrates the calibration batch ``xN`` (B, *) from ``t_max`` to
    ``t_min`` and records h_opt(t), the step that just meets the tolerance at t. The step
    density 1 / h_opt (interpolated in log t, log h) gives the step count
    n(t) = int_t^t_max ds / h_opt(s); the grid puts tau_j at n(tau_j) = j n(t_min) / (N - 1),
    so every step carries the same local error (de Boor 1973). ``num_steps`` defaults to
    ceil(n(t_min)) + 1, what the tolerance needs. A final step to 0 is appended, as in
    :meth:`EDMNoiseScheduler.timesteps`; use the grid as ``sample(..., time_steps=grid)`` with a
    fixed-step solver stepping in t (``"heun"``): the ``"bosh3"`` error estimate scales like
    Heun's local error, h^3. (Exponential integrators, exact where F is linear in x, need
    fewer steps at large t and do better on their own grids.)
    Returns (N + 1,) in ``xN``'s dtype and device.

    >>> import torch
    >>> from hpcdiff.diffusion.samplers import optimize_schedule
    >>> def F(x, t):  # EDM ODE rhs (x - x0_hat) / t for unit Gaussian data
    ...     return x * t.view(-1, 1) / (1 + t.view(-1, 1) ** 2)
    >>> grid = optimize_schedule(F, 80 * torch.randn(4, 8), 80.0, 0.002, num_steps=12)
    >>> grid.shape, grid[0].item(), grid[-2].item(), grid[-1].item()
    (torch.Size([13]), 80.0, 0.0020000000949949026, 0.0)
    """
    if not 0 < t_min < t_max:
        raise ValueError(f"need 0 < t_min < t_max, got t_min={t_min}, t_max={t_max}")
    if num_steps is not None and num_steps < 2:
        raise ValueError(f"num_steps must be >= 2, got {num_steps}")
    solver = AdaptiveSolver(denoiser, method=method, rtol=rtol, atol=atol)
    with torch.no_grad():
        solver.step(xN, xN.new_full((xN.shape[0],), t_max), xN.new_full((xN.shape[0],), t_min))
    t_mid, h_opt = (np.array(v, dtype=np.float64) for v in zip(*solver.step_sizes))
    # Step count n(t) on a fine log grid from t_max down to t_min (increasing in -log t).
    log_t = np.linspace(math.log(t_max), math.log(t_min), 4097)
    log_h = np.interp(-log_t, -np.log(t_mid), np.log(h_opt))
    density = np.exp(log_t - log_h)  # dn / d(-log t) = t / h_opt
    n = np.concatenate([[0.0], np.cumsum((density[1:] + density[:-1]) / 2 * -np.diff(log_t))])
    N = num_steps if num_steps is not None else math.ceil(n[-1]) + 1
    taus = np.exp(np.interp(np.linspace(0.0, n[-1], N), n, log_t))
    taus[0], taus[-1] = t_max, t_min
    grid = torch.tensor(np.append(taus, 0.0))
    return grid.to(dtype=xN.dtype, device=xN.device)
