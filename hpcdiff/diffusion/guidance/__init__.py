"""Guidance: DPS posterior-sampling score predictors and classifier-free guidance."""

from hpcdiff.diffusion.guidance.cfg import ClassifierFreeGuidancePredictor
from hpcdiff.diffusion.guidance.dps_guidance import (
    DataConsistencyDPSGuidance,
    DPSGuidance,
    DPSScorePredictor,
    ModelConsistencyDPSGuidance,
)

__all__ = [
    "ClassifierFreeGuidancePredictor",
    "DataConsistencyDPSGuidance",
    "DPSGuidance",
    "DPSScorePredictor",
    "ModelConsistencyDPSGuidance",
]
