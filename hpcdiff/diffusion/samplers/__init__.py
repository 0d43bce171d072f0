"""Solvers and the ``sample()`` loop (Karras et al. 2022; Lu et al. 2022 for DPM-Solver++)."""

from hpcdiff.diffusion.samplers.base import Solver
from hpcdiff.diffusion.samplers.dpm_solver import DPMSolverPlusPlus2M
from hpcdiff.diffusion.samplers.edm_stochastic_euler import EDMStochasticEulerSolver
from hpcdiff.diffusion.samplers.edm_stochastic_heun import EDMStochasticHeunSolver
from hpcdiff.diffusion.samplers.euler import EulerSolver
from hpcdiff.diffusion.samplers.heun import HeunSolver
from hpcdiff.diffusion.samplers.samplers import SOLVERS, sample

__all__ = [
    "SOLVERS",
    "DPMSolverPlusPlus2M",
    "EDMStochasticEulerSolver",
    "EDMStochasticHeunSolver",
    "EulerSolver",
    "HeunSolver",
    "Solver",
    "sample",
]
