"""ShardedEMA without partitioning against EDM's update, shard round trips, and the joining of
ZeRO-3 partitions (the multi-rank case runs in test_dist_launchers)."""

from __future__ import annotations

import pytest
import torch

from hpcdiff.distributed.config import EMAConfig
from hpcdiff.distributed.ema import ShardedEMA, consolidate_ema


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))


def test_update_is_edms_lerp():
    net, cfg = _net(), EMAConfig(halflife_samples=40.0, rampup_ratio=0.5)
    ema = ShardedEMA(net, cfg)
    expected = {n: p.detach().clone() for n, p in net.named_parameters()}
    for step in range(5):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        beta = ema.update(step * 8, 8)
        assert beta == cfg.beta(step * 8, 8)
        for n, p in net.named_parameters():  # EDM: p_ema.copy_(p_net.lerp(p_ema, beta))
            expected[n] = p.detach().lerp(expected[n], beta)
    for name, shadow in zip(ema.names, ema.shadow):
        torch.testing.assert_close(shadow, expected[name].reshape(-1), rtol=1e-6, atol=1e-7)


def test_state_dict_round_trip_and_mismatch():
    ema = ShardedEMA(_net(), EMAConfig(decay=0.5))
    state = ema.state_dict()
    other = ShardedEMA(_net(), EMAConfig(decay=0.5))
    for s in other.shadow:
        s.zero_()
    other.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(other.shadow, ema.shadow))
    whole = consolidate_ema([state])  # unpartitioned: one shard holds whole tensors
    assert all(torch.equal(whole[n].reshape(-1), s) for n, s in zip(ema.names, ema.shadow))
    wrong = ShardedEMA(torch.nn.Linear(3, 4), EMAConfig(decay=0.5))
    with pytest.raises(ValueError, match="different parameters"):
        wrong.load_state_dict(state)
    with pytest.raises(ValueError, match="not an EMA shard"):
        wrong.load_state_dict({"format": "x"})


def test_swapped_in_evaluates_with_ema_weights_and_restores():
    net = _net()
    ema = ShardedEMA(net, EMAConfig(decay=0.0))
    before = [p.detach().clone() for p in net.parameters()]
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(3.0)
    with ema.swapped_in():
        assert all(torch.equal(p, b) for p, b in zip(net.parameters(), before))
    assert all(torch.equal(p, 3.0 * b) for p, b in zip(net.parameters(), before))


def _partition_shards(full: torch.Tensor, ranks: int) -> list[dict]:
    """Fragments laid out as ZeRO-3 does: contiguous ranges of the flattened tensor."""
    size = -(-full.numel() // ranks)
    flat = full.reshape(-1)
    return [
        {"names": ["w"], "start": [r * size], "shape": [list(full.shape)],
         "shadow": [flat[r * size : (r + 1) * size]]}
        for r in range(ranks)
    ]  # fmt: skip


def test_consolidate_joins_zero3_partitions_in_any_order():
    full = torch.arange(15.0).reshape(3, 5)
    shards = _partition_shards(full, 4)
    assert torch.equal(consolidate_ema(shards[::-1])["w"], full)
    with pytest.raises(ValueError, match="do not tile"):
        consolidate_ema(shards[:2] + shards[3:])
    with pytest.raises(ValueError, match="no EMA shards"):
        consolidate_ema([])
