"""Training losses (denoising score matching) and evaluation metrics for diffusion models."""

from hpcdiff.diffusion.metrics.evaluation import crps, kcrps, power_spectrum
from hpcdiff.diffusion.metrics.losses import MSEDSMLoss, WeightedMSEDSMLoss

__all__ = ["MSEDSMLoss", "WeightedMSEDSMLoss", "crps", "kcrps", "power_spectrum"]
