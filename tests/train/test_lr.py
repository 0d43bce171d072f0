"""LR schedule: warm-up ramp, cosine endpoints, inverse-sqrt continuity, validation."""

import math

import pytest
import torch

from hpcdiff.config import ConfigError, from_dict
from hpcdiff.experiment.config import OptimConfig
from hpcdiff.train.lr import lr_at, set_lr


def test_warmup_is_linear_then_constant():
    cfg = OptimConfig(lr=1.0, warmup_steps=4)
    assert [lr_at(s, 10, cfg) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_cosine_runs_from_lr_to_floor():
    cfg = OptimConfig(lr=2.0, warmup_steps=2, schedule="cosine", min_lr_ratio=0.1)
    assert lr_at(2, 12, cfg) == pytest.approx(2.0)
    assert lr_at(7, 12, cfg) == pytest.approx(0.2 + 1.8 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(12, 12, cfg) == pytest.approx(0.2)
    assert lr_at(50, 12, cfg) == pytest.approx(0.2)


def test_inverse_sqrt_is_continuous_at_the_end_of_warmup():
    cfg = OptimConfig(lr=1.0, warmup_steps=100, schedule="inverse_sqrt")
    assert lr_at(99, 1000, cfg) == pytest.approx(1.0)
    assert lr_at(100, 1000, cfg) == pytest.approx(math.sqrt(100 / 101))
    assert lr_at(399, 1000, cfg) == pytest.approx(0.5)


def test_set_lr_and_validation():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    set_lr(opt, 0.125)
    assert opt.param_groups[0]["lr"] == 0.125
    with pytest.raises(ConfigError, match="'optim.lr' must be > 0"):
        from_dict(OptimConfig, {"lr": 0}, "optim")
    with pytest.raises(ConfigError, match="'optim.schedule': 'linear' is not one of"):
        from_dict(OptimConfig, {"schedule": "linear"}, "optim")
