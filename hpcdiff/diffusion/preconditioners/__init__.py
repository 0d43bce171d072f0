"""Preconditioners: affine input/output scalings wrapped around a diffusion network."""

from hpcdiff.diffusion.preconditioners.flow_matching import FlowMatchingPreconditioner
from hpcdiff.diffusion.preconditioners.preconditioners import (
    BaseAffinePreconditioner,
    EDMPreconditioner,
    IDDPMPreconditioner,
    VEPreconditioner,
    VPPreconditioner,
)

__all__ = [
    "BaseAffinePreconditioner",
    "EDMPreconditioner",
    "FlowMatchingPreconditioner",
    "IDDPMPreconditioner",
    "VEPreconditioner",
    "VPPreconditioner",
]
