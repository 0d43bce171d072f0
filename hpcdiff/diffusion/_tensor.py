"""Tiny shape helpers shared by the diffusion math modules."""

from __future__ import annotations

import torch


def bcast(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """View a per-sample tensor ``t`` (B,) as (B, 1, ..., 1) so it broadcasts against ``x``."""
    return t.reshape(-1, *([1] * (x.ndim - 1)))
