"""``sample()``: integrate a denoiser over a time grid with a solver."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Literal

import torch

from hpcdiff.diffusion.base import Denoiser
from hpcdiff.diffusion.noise_schedulers.base import NoiseScheduler
from hpcdiff.diffusion.samplers.adaptive import AdaptiveSolver, NormFn
from hpcdiff.diffusion.samplers.base import NoiseFn, Solver
from hpcdiff.diffusion.samplers.dpm_solver import DPMPlusPlus2MUniC2, DPMSolverPlusPlus2M
from hpcdiff.diffusion.samplers.edm_stochastic_euler import EDMStochasticEulerSolver
from hpcdiff.diffusion.samplers.edm_stochastic_heun import EDMStochasticHeunSolver
from hpcdiff.diffusion.samplers.euler import EulerSolver
from hpcdiff.diffusion.samplers.exponential import (
    EDMStochasticExponentialEulerSolver,
    ExponentialEulerSolver,
)
from hpcdiff.diffusion.samplers.heun import HeunSolver

SOLVERS: dict[str, type[Solver]] = {
    "euler": EulerSolver,
    "heun": HeunSolver,
    "edm_stochastic_euler": EDMStochasticEulerSolver,
    "edm_stochastic_heun": EDMStochasticHeunSolver,
    "dpm++2m": DPMSolverPlusPlus2M,
    "dpmpp_2m": DPMSolverPlusPlus2M,
    "dpmpp_2m_unic": DPMPlusPlus2MUniC2,
    "exponential_euler": ExponentialEulerSolver,
    "edm_stochastic_exponential_euler": EDMStochasticExponentialEulerSolver,
    "adaptive": AdaptiveSolver,
}
"""Solvers :func:`sample` builds by name as ``SOLVERS[name](denoiser, **options)``, the options
being ``cls.scheduler_defaults(noise_scheduler)`` (when the class has it) updated with
``solver_options``."""

SolverName = Literal[
    "euler",
    "heun",
    "edm_stochastic_euler",
    "edm_stochastic_heun",
    "dpm++2m",
    "dpmpp_2m",
    "dpmpp_2m_unic",
    "exponential_euler",
    "edm_stochastic_exponential_euler",
    "adaptive",
]


def make_solver(
    solver: str | Solver,
    denoiser: Denoiser,
    noise_scheduler: Any,
    solver_options: dict[str, Any] | None = None,
    *,
    noise_fn: NoiseFn | None = None,
    norm_fn: NormFn | None = None,
) -> Solver:
    """The solver :func:`sample` integrates with: ``SOLVERS[solver](denoiser, **options)``,
    the options being ``cls.scheduler_defaults(noise_scheduler)`` (when the class has it)
    updated with ``solver_options``; or a ready solver, checked (it takes no options).

    ``noise_fn`` (``x -> eps``) is passed to every named solver (the stochastic ones draw all
    their noise from it), ``norm_fn`` to those that measure an error norm (the adaptive one);
    both default to the solvers' own.

    >>> from hpcdiff.diffusion.noise_schedulers import EDMNoiseScheduler
    >>> solver = make_solver("edm_stochastic_euler", lambda x, t: -x, EDMNoiseScheduler(),
    ...                      {"S_churn": 10}, noise_fn=torch.zeros_like)
    >>> solver.step(torch.ones(1, 2), torch.tensor([1.0]), torch.tensor([0.5]))  # t_hat = 2**0.5
    tensor([[1.9142, 1.9142]])
    """
    solver_options = dict(solver_options or {})
    if isinstance(solver, str):
        if solver not in SOLVERS:
            available = ", ".join(f'"{k}"' for k in SOLVERS)
            raise ValueError(f"Unknown solver '{solver}'. Available solvers: {available}.")
        solver_cls: Callable[..., Solver] = SOLVERS[solver]
        defaults = getattr(solver_cls, "scheduler_defaults", None)
        if defaults is not None:
            solver_options = {**defaults(noise_scheduler), **solver_options}
        if noise_fn is not None:
            solver_options["noise_fn"] = noise_fn
        if norm_fn is not None and "norm_fn" in inspect.signature(solver_cls).parameters:
            solver_options["norm_fn"] = norm_fn
        return solver_cls(denoiser, **solver_options)
    if noise_fn is not None or norm_fn is not None:
        raise ValueError("noise_fn and norm_fn build a named solver; give them to a ready one")
    if solver_options:
        raise ValueError(
            "solver_options must be None when solver is a Solver instance, got "
            f"{sorted(solver_options)}"
        )
    if not callable(getattr(solver, "step", None)):
        raise TypeError(
            "solver must be a solver name or an object with a step(x, t_cur, t_next) method, "
            f"got {type(solver).__name__}"
        )
    return solver


def sample(
    denoiser: Denoiser,
    xN: torch.Tensor,
    noise_scheduler: NoiseScheduler,
    num_steps: int,
    solver: SolverName | Solver = "heun",
    time_steps: torch.Tensor | None = None,
    solver_options: dict[str, Any] | None = None,
    time_eval: list[int] | None = None,
) -> torch.Tensor | list[torch.Tensor]:
    """Integrate ``x_{n-1} = solver.step(x_n, t_n, t_{n-1})`` from ``xN`` over the grid
    ``t_N > ... > t_0`` (``noise_scheduler.timesteps(num_steps)`` or ``time_steps``).

    Parameters
    ----------
    denoiser : Denoiser
        ``(x, t) -> update`` for the solver, usually ``noise_scheduler.get_denoiser(...)``.
    xN : Tensor
        Initial state (B, *); its dtype and device are those of the result and of the grid.
    noise_scheduler : NoiseScheduler
        Gives the time grid via ``timesteps(num_steps, device=, dtype=)``.
    num_steps : int
        Number of steps; ignored when ``time_steps`` is given.
    solver : str or Solver
        A name in :data:`SOLVERS` (built with ``solver_options``; the DPM-Solver++ and
        exponential solvers also get what they need from ``noise_scheduler``) or a ready
        solver, whose ``reset()`` (multistep history, counters), if any, is called first.
        Default ``"heun"``.
    time_steps : Tensor, optional
        Explicit grid ``(N + 1,)``, decreasing; end with 0 for a fully denoised sample.
    solver_options : dict, optional
        Constructor options of a named solver; must be empty for a solver instance.
    time_eval : list of int, optional
        Step indices in ``range(N)`` after which to return the state; then a list is returned.

    Returns
    -------
    Tensor or list of Tensor
        ``x_0`` (B, *), or the states after the steps in ``time_eval``.

    Under ``torch.no_grad()`` the state is detached between steps (a guided denoiser that
    enables grad internally then builds no graph across steps); otherwise the graph is kept.

    >>> import torch
    >>> from hpcdiff.diffusion.samplers import sample
    >>> class Linear:  # t from 1 to 0 in equal steps
    ...     def timesteps(self, num_steps, *, device=None, dtype=None):
    ...         return torch.linspace(1.0, 0.0, num_steps + 1, device=device, dtype=dtype)
    >>> x0 = sample(lambda x, t: -x, torch.ones(2, 3), Linear(), 4, solver="euler")
    >>> torch.allclose(x0, torch.full((2, 3), 1.25**4))
    True
    """
    solver_ = make_solver(solver, denoiser, noise_scheduler, solver_options)
    reset = getattr(solver_, "reset", None)
    if callable(reset):
        reset()
    if time_steps is not None:
        t_steps = time_steps.to(device=xN.device, dtype=xN.dtype)
    else:
        t_steps = noise_scheduler.timesteps(num_steps, device=xN.device, dtype=xN.dtype)
    n_steps = len(t_steps) - 1
    if time_eval is not None:
        out_of_range = [i for i in time_eval if i < 0 or i >= n_steps]
        if out_of_range:
            raise ValueError(
                f"time_eval contains out-of-range indices {out_of_range}; "
                f"valid indices are in range(0, {n_steps})."
            )
    detach = not torch.is_grad_enabled()
    batch = xN.shape[0]
    samples: list[torch.Tensor] = []
    x = xN
    for i in range(n_steps):
        x = solver_.step(x, t_steps[i].expand(batch), t_steps[i + 1].expand(batch))
        if detach:
            x = x.detach()
        if time_eval is not None and i in time_eval:
            samples.append(x.clone())
    return samples if time_eval is not None else x
