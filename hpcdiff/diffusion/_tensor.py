"""The one per-sample broadcast helper of the diffusion math modules."""

from __future__ import annotations

import torch


def per_sample(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """View times (B,) as (B, 1, ..., 1) against ``x``; contiguous so compiled denoisers see
    one stride layout whatever view of the time grid the caller passes."""
    return t.contiguous().reshape(-1, *([1] * (x.ndim - 1)))
