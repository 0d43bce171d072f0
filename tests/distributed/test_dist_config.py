"""Config sections dist/zero/ema/checkpoint: validation naming the key, EDM's EMA decay, and the
DeepSpeed JSON built from them."""

from __future__ import annotations

import json
import math

import pytest
import torch

from hpcdiff.config import ConfigError, from_dict
from hpcdiff.distributed.config import CheckpointConfig, DistConfig, EMAConfig, ZeroConfig
from hpcdiff.distributed.engine import deepspeed_config
from hpcdiff.experiment.config import OptimConfig

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("cls", "section", "data", "key"),
    [
        (ZeroConfig, "zero", {"stage": 4}, "zero.stage"),
        (ZeroConfig, "zero", {"precision": "fp8"}, "zero.precision"),
        (ZeroConfig, "zero", {"grad_accum_steps": 0}, "zero.grad_accum_steps"),
        (ZeroConfig, "zero", {"stage": 2, "offload_param": "cpu"}, "zero.offload_param"),
        (ZeroConfig, "zero", {"offload_optimizer": "cpu"}, "zero.offload_optimizer"),
        (ZeroConfig, "zero", {"stage": 3, "offload_param": "nvme"}, "zero.nvme_path"),
        (ZeroConfig, "zero", {"stage": 1, "init_on_construct": True}, "zero.init_on_construct"),
        (ZeroConfig, "zero", {"stages": 1}, "zero.stages"),
        (DistConfig, "dist", {"timeout_s": 0}, "dist.timeout_s"),
        (DistConfig, "dist", {"device": "tpu"}, "dist.device"),
        (EMAConfig, "ema", {"decay": 1.0}, "ema.decay"),
        (EMAConfig, "ema", {"halflife_samples": None}, "ema.halflife_samples"),
        (EMAConfig, "ema", {"rampup_ratio": 0}, "ema.rampup_ratio"),
        (CheckpointConfig, "checkpoint", {"every_steps": 0}, "checkpoint.every_steps"),
        (CheckpointConfig, "checkpoint", {"keep_last": 0}, "checkpoint.keep_last"),
    ],
)
def test_invalid_sections_name_the_key(cls, section, data, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        from_dict(cls, data, section)


def test_valid_sections_load_from_yaml_like_dicts():
    zero = from_dict(
        ZeroConfig,
        {
            "stage": 3,
            "precision": "bf16",
            "offload_param": "cpu",
            "extra": {"stage3_max_live_parameters": 1000},
        },
        "zero",
    )
    assert (zero.stage, zero.precision, zero.offload_param) == (3, "bf16", "cpu")
    assert from_dict(EMAConfig, {"decay": 0.999}, "ema").beta(10**6, 64) == 0.999


def test_edm_ema_beta():
    """EDM: beta = 0.5 ** (B / max(min(h, r * n), 1e-8)), so the EMA halves every h samples."""
    cfg = EMAConfig(halflife_samples=1000.0, rampup_ratio=None)
    assert math.prod(cfg.beta(s * 10, 10) for s in range(100)) == pytest.approx(0.5)
    ramp = EMAConfig(halflife_samples=1000.0, rampup_ratio=0.05)
    assert ramp.beta(0, 10) == 0.0  # first step: the EMA becomes the weights
    assert ramp.beta(4000, 10) == pytest.approx(0.5 ** (10 / 200))  # ramp-up: h = 0.05 * n
    assert ramp.beta(10**6, 10) == pytest.approx(0.5 ** (10 / 1000))  # h capped at 1000


def test_deepspeed_config_from_sections():
    zero = ZeroConfig(
        stage=2,
        precision="bf16",
        grad_accum_steps=3,
        offload_optimizer="cpu",
        extra={"overlap_comm": False},
    )
    optim = OptimConfig(lr=3e-4, betas=(0.8, 0.95), weight_decay=0.1, eps=1e-6, grad_clip=2.0)
    ds = deepspeed_config(zero, optim, micro_batch_size=4, world_size=8, device=CPU)
    assert ds["train_batch_size"] == 4 * 3 * 8
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (4, 3)
    assert ds["gradient_clipping"] == 2.0
    assert ds["zero_optimization"] == {
        "stage": 2,
        "offload_optimizer": {"device": "cpu", "pin_memory": True},
        "overlap_comm": False,
    }
    assert ds["optimizer"] == {
        "type": "AdamW",
        "params": {
            "lr": 3e-4,
            "betas": [0.8, 0.95],
            "eps": 1e-6,
            "weight_decay": 0.1,
            "torch_adam": True,
        },
    }
    assert ds["bf16"] == {"enabled": True} and ds["fp16"] == {"enabled": False}
    gpu = deepspeed_config(ZeroConfig(), optim, 1, 1, torch.device("cuda", 0))
    assert gpu["optimizer"]["params"]["torch_adam"] is False  # DeepSpeed's fused Adam on GPUs


def test_native_deepspeed_json_gets_auto_values_filled(tmp_path):
    native = {
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "zero_optimization": {"stage": 3},
        "gradient_clipping": "auto",
    }
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(native))
    optim = OptimConfig(grad_clip=1.5)
    ds = deepspeed_config(ZeroConfig(ds_config=str(path)), optim, 2, 4, CPU)
    assert ds == {
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": 3},
        "gradient_clipping": 1.5,
    }
    with pytest.raises(FileNotFoundError, match="zero.ds_config"):
        deepspeed_config(ZeroConfig(ds_config=str(tmp_path / "nope.json")), optim, 2, 4, CPU)
    with pytest.raises(ValueError, match="micro_batch_size=0"):
        deepspeed_config(ZeroConfig(), optim, 0, 4, CPU)
