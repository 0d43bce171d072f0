"""The diffusion API (protocols, schedulers, preconditioners, losses, samplers, guidance).

Mirrors ``physicsnemo.diffusion`` name for name; subpackages are imported lazily on access.
"""

import importlib

from hpcdiff.diffusion.base import Denoiser, DiffusionModel, Predictor, PredictorType

_SUBPACKAGES = (
    "noise_schedulers",
    "preconditioners",
    "metrics",
    "samplers",
    "guidance",
    "utils",
    "multi_diffusion",
)

__all__ = ["Denoiser", "DiffusionModel", "Predictor", "PredictorType", *_SUBPACKAGES]


def __getattr__(name: str):
    if name in _SUBPACKAGES:
        return importlib.import_module(f"hpcdiff.diffusion.{name}")
    raise AttributeError(f"module 'hpcdiff.diffusion' has no attribute {name!r}")
