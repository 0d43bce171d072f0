"""What a bare ``pip install hpcdiff`` provides, and the one-line error when a package is missing.

Core dependencies (setup.py ``install_requires``) are everything a command needs to run:
torch, tensordict, numpy, PyYAML, tqdm, the NetCDF stack (netCDF4, cftime, dask, psutil,
global-land-mask), DeepSpeed, mpi4py and nvtx. Extras add what only some runs want:
``plots`` (matplotlib: PNG maps, spectra, histograms), ``tensorboard`` (``run.tensorboard``
scalars), ``mpi`` (MPICH, for machines without a site MPI library) and ``dev`` (pytest, ruff).
docs/install.md says the same for users.
"""

from __future__ import annotations

import importlib.util

# Top-level module -> the extra that installs it; any other missing package is a core one.
EXTRA_OF = {
    "matplotlib": "plots",
    "tensorboard": "tensorboard",
    "mpich": "mpi",
    "pytest": "dev",
    "ruff": "dev",
}


class MissingDependency(ModuleNotFoundError):
    """A package a command needs is not installed; the message names what to install."""


def install_hint(module: str) -> str:
    """``module``'s package and what installs it: its extra, or hpcdiff itself (core)."""
    top = module.split(".")[0]
    extra = EXTRA_OF.get(top)
    if extra is not None:
        return f"{top}, from the '{extra}' extra: pip install 'hpcdiff[{extra}]'"
    return f"{top}, a core dependency: reinstall hpcdiff (pip install hpcdiff)"


def available(module: str) -> bool:
    """Whether ``module`` can be imported (found without importing it)."""
    return importlib.util.find_spec(module) is not None


def require(module: str, purpose: str) -> None:
    """Raise :class:`MissingDependency` before any work when ``module`` is not installed."""
    if not available(module):
        raise MissingDependency(f"{purpose} need {install_hint(module)}", name=module)
