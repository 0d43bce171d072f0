"""Multi-diffusion: patch-based training and sampling of diffusion models on large 2-D grids."""

from hpcdiff.diffusion.multi_diffusion._grid import accum_dtype
from hpcdiff.diffusion.multi_diffusion.dps_guidance import (
    MultiDiffusionDataConsistencyDPSGuidance,
    MultiDiffusionDPSGuidance,
    MultiDiffusionDPSScorePredictor,
    MultiDiffusionModelConsistencyDPSGuidance,
)
from hpcdiff.diffusion.multi_diffusion.losses import (
    MultiDiffusionMSEDSMLoss,
    MultiDiffusionWeightedMSEDSMLoss,
)
from hpcdiff.diffusion.multi_diffusion.models import MultiDiffusionModel2D
from hpcdiff.diffusion.multi_diffusion.patching import (
    BasePatching2D,
    GridPatching2D,
    RandomPatching2D,
    image_batching,
    image_fuse,
)
from hpcdiff.diffusion.multi_diffusion.predictor import MultiDiffusionPredictor

__all__ = [
    "BasePatching2D",
    "GridPatching2D",
    "MultiDiffusionDPSGuidance",
    "MultiDiffusionDPSScorePredictor",
    "MultiDiffusionDataConsistencyDPSGuidance",
    "MultiDiffusionMSEDSMLoss",
    "MultiDiffusionModelConsistencyDPSGuidance",
    "MultiDiffusionModel2D",
    "MultiDiffusionPredictor",
    "MultiDiffusionWeightedMSEDSMLoss",
    "RandomPatching2D",
    "accum_dtype",  # not in PhysicsNeMo: the dtype patch fusion sums in (tiled fusion matches it)
    "image_batching",
    "image_fuse",
]
