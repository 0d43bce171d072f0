"""ZeRO memory estimate (Rajbhandari et al. 2020, with DeepSpeed's master copies), closed form."""

from __future__ import annotations

import pytest

from hpcdiff.distributed.memory import ZeroMemory, estimate_zero_memory

PSI = 1_000_000


@pytest.mark.parametrize(
    ("stage", "precision", "params", "grads", "optimizer"),
    [
        (0, "fp32", 4 * PSI, 4 * PSI, 8 * PSI),
        (0, "bf16", 2 * PSI, 6 * PSI, 12 * PSI),
        (1, "fp32", 4 * PSI, 4 * PSI, 12 * PSI // 4),
        (2, "bf16", 2 * PSI, 4 * PSI // 4, 12 * PSI // 4),
        (3, "fp32", 4 * PSI // 4, 4 * PSI // 4, 12 * PSI // 4),
        (3, "fp16", 2 * PSI // 4, 4 * PSI // 4, 12 * PSI // 4),
    ],
)
def test_estimate_per_stage(stage, precision, params, grads, optimizer):
    assert estimate_zero_memory(PSI, stage, 4, precision) == ZeroMemory(params, grads, optimizer)


def test_zero3_divides_everything_by_the_world_size():
    one = estimate_zero_memory(PSI, 3, 1, "bf16")
    assert estimate_zero_memory(PSI, 3, 8, "bf16").total * 8 == one.total
    assert estimate_zero_memory(7, 3, 2).params == 4 * 4  # partitions padded to ceil(7 / 2)


def test_zero3_over_zero0_at_two_ranks():
    ratio = {
        p: estimate_zero_memory(PSI, 3, 2, p).total / estimate_zero_memory(PSI, 0, 2, p).total
        for p in ("fp32", "bf16")
    }
    assert ratio == {"fp32": 0.625, "bf16": 0.45}


def test_describe_and_bad_arguments():
    text = estimate_zero_memory(2**20, 0, 1).describe()
    assert text == "params 4.00 MiB + grads 4.00 MiB + optimizer 8.00 MiB = 16.00 MiB per rank"
    for kwargs, key in (
        ({"stage": 4}, "stage=4"),
        ({"world_size": 0}, "world_size=0"),
        ({"precision": "fp8"}, "precision='fp8'"),
    ):
        args = {"num_params": 10, "stage": 0, "world_size": 1, **kwargs}
        with pytest.raises(ValueError, match=key):
            estimate_zero_memory(**args)
