"""Small collectives the trainer needs, no-ops when no process group is running."""

from __future__ import annotations

import torch
import torch.distributed as dist


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def sum_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """Sum of ``value`` over all ranks (a new tensor; the input is not modified)."""
    out = value.detach().clone()
    if _active():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """Average of ``value`` over all ranks (a new tensor; the input is not modified)."""
    out = sum_over_ranks(value)
    if _active():
        out /= dist.get_world_size()
    return out


def barrier() -> None:
    if _active():
        dist.barrier()
