"""The diffusion API (protocols, schedulers, preconditioners, losses, samplers, guidance).

Mirrors ``physicsnemo.diffusion`` name for name; subpackages are imported lazily on access.
"""

from hpcdiff.diffusion.base import Denoiser, DiffusionModel, Predictor, PredictorType
from hpcdiff.lazy import lazy_exports

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


__getattr__, __dir__ = lazy_exports(__name__, {n: f"{__name__}.{n}" for n in _SUBPACKAGES})
