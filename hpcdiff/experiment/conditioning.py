"""What the model is conditioned on: the inputs besides the noisy target."""

from __future__ import annotations

import torch

from hpcdiff.data import Batch


def condition_of(batch: Batch) -> torch.Tensor | None:
    """Regridded coarse condition and static fields stacked along channels (B, Cc, H, W)."""
    parts = [p for p in (batch.condition, batch.static) if p is not None]
    return torch.cat(parts, dim=1) if parts else None
