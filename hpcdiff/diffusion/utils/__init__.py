"""Utilities of the diffusion API: per-sample seeded noise, infinite sampler, model wrappers."""

from hpcdiff.diffusion.utils.model_wrappers import ConcatConditionWrapper
from hpcdiff.diffusion.utils.utils import InfiniteSampler, StackedRandomGenerator

__all__ = ["ConcatConditionWrapper", "InfiniteSampler", "StackedRandomGenerator"]
