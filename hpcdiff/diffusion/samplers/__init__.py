"""Solvers and the ``sample()`` loop (Karras et al. 2022; Lu et al. 2022 for DPM-Solver++;
Zhao et al. 2023 for UniC; exponential integrators; adaptive embedded Runge-Kutta pairs)."""

from hpcdiff.diffusion.samplers.adaptive import AdaptiveSolver
from hpcdiff.diffusion.samplers.base import Solver
from hpcdiff.diffusion.samplers.dpm_solver import (
    DPMPlusPlus2M,
    DPMPlusPlus2MUniC2,
    DPMSolverPlusPlus2M,
)
from hpcdiff.diffusion.samplers.edm_stochastic_euler import EDMStochasticEulerSolver
from hpcdiff.diffusion.samplers.edm_stochastic_heun import EDMStochasticHeunSolver
from hpcdiff.diffusion.samplers.euler import EulerSolver
from hpcdiff.diffusion.samplers.exponential import (
    EDMStochasticExponentialEulerSolver,
    ExponentialEulerSolver,
)
from hpcdiff.diffusion.samplers.heun import HeunSolver
from hpcdiff.diffusion.samplers.samplers import SOLVERS, make_solver, sample
from hpcdiff.diffusion.samplers.schedule_opt import optimize_schedule

__all__ = [
    "SOLVERS",
    "AdaptiveSolver",
    "DPMPlusPlus2M",
    "DPMPlusPlus2MUniC2",
    "DPMSolverPlusPlus2M",
    "EDMStochasticEulerSolver",
    "EDMStochasticExponentialEulerSolver",
    "EDMStochasticHeunSolver",
    "EulerSolver",
    "ExponentialEulerSolver",
    "HeunSolver",
    "Solver",
    "make_solver",
    "optimize_schedule",
    "sample",
]
