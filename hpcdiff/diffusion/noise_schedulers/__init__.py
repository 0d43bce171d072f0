"""Noise schedules: the NoiseScheduler protocol, the linear-Gaussian base class and the EDM,
EDM log-uniform, VE, VP, iDDPM, Student-t EDM and rectified-flow / flow-matching schedules."""

from hpcdiff.diffusion.noise_schedulers.base import NoiseScheduler
from hpcdiff.diffusion.noise_schedulers.edm import EDMNoiseScheduler
from hpcdiff.diffusion.noise_schedulers.edm_log_uniform import EDMLogUniformNoiseScheduler
from hpcdiff.diffusion.noise_schedulers.iddpm import IDDPMNoiseScheduler
from hpcdiff.diffusion.noise_schedulers.linear_gaussian import LinearGaussianNoiseScheduler
from hpcdiff.diffusion.noise_schedulers.rectified_flow import (
    FlowMatchingNoiseScheduler,
    RectifiedFlowNoiseScheduler,
)
from hpcdiff.diffusion.noise_schedulers.student_t_edm import StudentTEDMNoiseScheduler
from hpcdiff.diffusion.noise_schedulers.ve import VENoiseScheduler
from hpcdiff.diffusion.noise_schedulers.vp import VPNoiseScheduler

__all__ = [
    "EDMLogUniformNoiseScheduler",
    "EDMNoiseScheduler",
    "FlowMatchingNoiseScheduler",
    "IDDPMNoiseScheduler",
    "LinearGaussianNoiseScheduler",
    "NoiseScheduler",
    "RectifiedFlowNoiseScheduler",
    "StudentTEDMNoiseScheduler",
    "VENoiseScheduler",
    "VPNoiseScheduler",
]
