"""Exponential moving average of the weights under every ZeRO stage, ZeRO-3 included.

Each rank averages only what it holds: whole parameters at ZeRO 0-2, its flat partition
(``param.ds_tensor``) at ZeRO-3, so the EMA is sharded exactly like the weights and costs no
communication. Shards are saved per rank and joined by :func:`consolidate_ema`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist

from hpcdiff.distributed.config import EMAConfig

_FORMAT = "hpcdiff.ema/1"


def _local(param: torch.nn.Parameter) -> torch.Tensor:
    """What this rank stores of ``param``: the ZeRO-3 partition (flat) or the whole tensor."""
    return param.ds_tensor if hasattr(param, "ds_tensor") else param.data


def _partition_rank(param: torch.nn.Parameter) -> int:
    group = getattr(param, "ds_process_group", None)
    return dist.get_rank(group=group) if dist.is_initialized() else 0


class ShardedEMA:
    """EDM-style EMA ``theta_ema <- beta * theta_ema + (1 - beta) * theta`` (Karras et al. 2022)
    of the local parameter shards of ``module``, kept in float32.

    ``beta`` follows :meth:`EMAConfig.beta` (half-life in samples with ramp-up, or a fixed
    decay). Under parameter NVMe offload the partitions are not resident and are not supported.
    """

    def __init__(self, module: torch.nn.Module, cfg: EMAConfig) -> None:
        self.cfg = cfg
        named = list(module.named_parameters())
        self.names = [name for name, _ in named]
        self.params = [param for _, param in named]
        with torch.no_grad():
            self.shadow = [_local(p).detach().float().clone() for p in self.params]

    @torch.no_grad()
    def update(self, samples_seen: int, batch_size: int) -> float:
        """Average in the current weights after a step of ``batch_size`` samples taken when
        ``samples_seen`` samples had been seen before it; returns the ``beta`` used."""
        beta = self.cfg.beta(samples_seen, batch_size)
        current = [_local(p).float() for p in self.params]
        torch._foreach_lerp_(self.shadow, current, 1.0 - beta)
        return beta

    def layout(self) -> list[dict]:
        """Per parameter: full shape, element count, and where this rank's shard starts."""
        out = []
        for p, s in zip(self.params, self.shadow):
            partitioned = hasattr(p, "ds_tensor")
            shape = list(p.ds_shape) if partitioned else list(p.shape)
            numel = int(p.ds_numel) if partitioned else p.numel()
            offset = _partition_rank(p) * s.numel() if partitioned else 0
            out.append(
                {"shape": shape, "numel": numel, "partitioned": partitioned, "offset": offset}
            )
        return out

    def state_dict(self) -> dict:
        """This rank's shard: names, float32 shadows and their layout."""
        return {
            "format": _FORMAT,
            "names": list(self.names),
            "layout": self.layout(),
            "shadow": [s.detach().cpu() for s in self.shadow],
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a shard saved by :meth:`state_dict` under the same ZeRO layout."""
        if state.get("format") != _FORMAT:
            raise ValueError(f"not an EMA shard (format {state.get('format')!r})")
        if state["names"] != self.names:
            raise ValueError("EMA shard holds different parameters than the model")
        for name, s, saved in zip(self.names, self.shadow, state["shadow"]):
            if saved.shape != s.shape:
                raise ValueError(
                    f"EMA shard of {name!r} has shape {tuple(saved.shape)}, this rank holds "
                    f"{tuple(s.shape)}: resume with the same ZeRO stage and world size"
                )
            s.copy_(saved)

    def _materialized(self) -> list[int]:
        """Indices of ZeRO-3 parameters whose whole tensor is currently held (persistent small
        parameters, or inside a gather): their ``data`` must change along with the partition."""
        return [i for i, p in enumerate(self.params) if hasattr(p, "ds_tensor") and p.numel()]

    def _whole(self, i: int) -> torch.Tensor:
        """The whole EMA tensor of partitioned parameter ``i`` (collective over its group)."""
        p, shard = self.params[i], self.shadow[i]
        group = getattr(p, "ds_process_group", None)
        flat = shard.new_empty(shard.numel() * dist.get_world_size(group=group))
        dist.all_gather_into_tensor(flat, shard, group=group)
        return flat[: p.ds_numel].view(p.ds_shape)

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """Temporarily load the EMA weights into the module (e.g. for validation); collective
        under ZeRO-3, where every rank must enter it."""
        materialized = self._materialized()
        saved = [_local(p).detach().clone() for p in self.params]
        saved_whole = {i: self.params[i].data.clone() for i in materialized}
        with torch.no_grad():
            for p, s in zip(self.params, self.shadow):
                _local(p).copy_(s)
            for i in materialized:
                self.params[i].data.copy_(self._whole(i))
        try:
            yield
        finally:
            with torch.no_grad():
                for p, s in zip(self.params, saved):
                    _local(p).copy_(s)
                for i, whole in saved_whole.items():
                    self.params[i].data.copy_(whole)


def consolidate_ema(shards: list[dict]) -> dict[str, torch.Tensor]:
    """Join the per-rank EMA shards (any order) into whole float32 tensors by name."""
    if not shards:
        raise ValueError("no EMA shards to consolidate")
    names = shards[0]["names"]
    out = {}
    for i, name in enumerate(names):
        info = shards[0]["layout"][i]
        if not info["partitioned"]:
            out[name] = shards[0]["shadow"][i].reshape(info["shape"])
            continue
        pieces = sorted(
            ((s["layout"][i]["offset"], s["shadow"][i]) for s in shards), key=lambda item: item[0]
        )
        starts = [offset for offset, _ in pieces]
        expected = [sum(p.numel() for _, p in pieces[:k]) for k in range(len(pieces))]
        flat = torch.cat([piece.reshape(-1) for _, piece in pieces])
        if starts != expected or flat.numel() < info["numel"]:
            raise ValueError(
                f"EMA shards of {name!r} do not tile it: offsets {starts}, "
                f"{flat.numel()} of {info['numel']} elements (is a rank's shard missing?)"
            )
        out[name] = flat[: info["numel"]].reshape(info["shape"])
    return out
