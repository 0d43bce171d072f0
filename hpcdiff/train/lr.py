"""Learning-rate schedule: linear warm-up, then constant, cosine or inverse-sqrt decay.

A pure function of the step, so resuming needs no scheduler state: the step number suffices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from hpcdiff.config import ConfigError


@dataclass
class OptimConfig:
    """Config section ``optim``."""

    lr: float = 2e-4  # AdamW learning rate after warm-up (the peak of every schedule)
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW decay rates of the moment estimates
    weight_decay: float = 0.0  # AdamW decoupled weight decay (0 disables it)
    eps: float = 1e-8  # AdamW term added to the denominator for numerical stability
    # Optimizer steps of linear warm-up, from lr / warmup_steps up to lr; 0 disables it.
    warmup_steps: int = 0
    # After warm-up: constant lr; cosine decay to min_lr_ratio x lr at run.steps; or
    # inverse_sqrt, lr x sqrt(max(warmup_steps, 1) / step) with steps counted from 1.
    schedule: Literal["constant", "cosine", "inverse_sqrt"] = "constant"
    min_lr_ratio: float = 0.0  # cosine floor, as a fraction of lr
    grad_clip: float = 0.0  # 0 disables clipping

    def validate(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"config key 'optim.lr' must be > 0, got {self.lr}")
        if self.warmup_steps < 0:
            raise ConfigError(
                f"config key 'optim.warmup_steps' must be >= 0, got {self.warmup_steps}"
            )
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(
                f"config key 'optim.min_lr_ratio' must be in [0, 1], got {self.min_lr_ratio}"
            )
        if self.grad_clip < 0:
            raise ConfigError(f"config key 'optim.grad_clip' must be >= 0, got {self.grad_clip}")


def lr_at(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based) of ``total_steps``."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "inverse_sqrt":
        return cfg.lr * math.sqrt(max(cfg.warmup_steps, 1) / max(step + 1, 1))
    span = max(total_steps - cfg.warmup_steps, 1)
    progress = min(max(step - cfg.warmup_steps, 0) / span, 1.0)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
