"""Exponential moving average of the weights under every ZeRO stage, sharded at every stage.

Each rank averages one fragment of every trained parameter (see :mod:`.shards`): its
partition at ZeRO-1/2/3 and an even 1/N split at ZeRO-0, so EMA memory and checkpoint bytes
per rank shrink with the rank count at every stage and the update costs no communication.
Only :meth:`ShardedEMA.swapped_in` (validation with the EMA weights) gathers whole tensors.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.distributed as dist

from hpcdiff.distributed.config import EMAConfig
from hpcdiff.distributed.shards import (
    Fragment,
    full_numel,
    full_shape,
    join_fragments,
    local_view,
    owned_fragment,
)

_FORMAT = "hpcdiff.ema/2"


class ShardedEMA:
    """EDM-style EMA ``theta_ema <- beta * theta_ema + (1 - beta) * theta`` (Karras et al. 2022)
    of this rank's fragments of the trained parameters of ``module``, kept in float32.

    ``beta`` follows :meth:`EMAConfig.beta` (half-life in samples with ramp-up, or a fixed
    decay). Build it after the DeepSpeed engine (``ShardedEMA(engine.module, cfg)``): the
    fragments follow the engine's partitions. Parameter NVMe offload is not supported.
    """

    def __init__(self, module: torch.nn.Module, cfg: EMAConfig) -> None:
        self.cfg = cfg
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        self.names = [name for name, _ in named]
        self.params = [param for _, param in named]
        self.fragments = [owned_fragment(p) for p in self.params]
        with torch.no_grad():
            self.shadow = [
                local_view(p, f).detach().float().clone()
                for p, f in zip(self.params, self.fragments)
            ]

    @torch.no_grad()
    def update(self, samples_seen: int, batch_size: int) -> float:
        """Average in the current weights after a step of ``batch_size`` samples taken when
        ``samples_seen`` samples had been seen before it; returns the ``beta`` used."""
        beta = self.cfg.beta(samples_seen, batch_size)
        current = [local_view(p, f).float() for p, f in zip(self.params, self.fragments)]
        torch._foreach_lerp_(self.shadow, current, 1.0 - beta)
        return beta

    def state_dict(self) -> dict:
        """This rank's fragments: names, starts, whole shapes and float32 values."""
        return {
            "format": _FORMAT,
            "names": list(self.names),
            "start": [f.start for f in self.fragments],
            "shape": [full_shape(p) for p in self.params],
            "shadow": [s.detach().cpu() for s in self.shadow],
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore fragments saved by :meth:`state_dict` under the same layout (checkpoints
        of another rank count or stage are resharded by ``checkpoint.load_checkpoint``)."""
        if state.get("format") != _FORMAT:
            raise ValueError(f"not an EMA shard (format {state.get('format')!r})")
        if state["names"] != self.names:
            raise ValueError("EMA shard holds different parameters than the model")
        for name, frag, s, start, saved in zip(
            self.names, self.fragments, self.shadow, state["start"], state["shadow"]
        ):
            if (start, saved.numel()) != (frag.start, frag.numel):
                raise ValueError(
                    f"EMA shard of {name!r} holds elements {start}+{saved.numel()}, this rank "
                    f"holds {frag.start}+{frag.numel}"
                )
            s.copy_(saved.reshape(s.shape))

    def load_fragments(self, value_of: Callable[[int, Fragment], torch.Tensor]) -> None:
        """Set every fragment from ``value_of(index, fragment)`` (float32, ``numel`` values)."""
        with torch.no_grad():
            for i, (s, frag) in enumerate(zip(self.shadow, self.fragments)):
                s.copy_(value_of(i, frag).reshape(s.shape))

    def _whole(self, i: int) -> torch.Tensor:
        """The whole EMA tensor of parameter ``i``: the fragments summed over the ranks
        (collective; exact, since every element comes from exactly one rank)."""
        p, frag, shard = self.params[i], self.fragments[i], self.shadow[i]
        whole = shard.new_zeros(full_numel(p))
        whole[frag.start : frag.start + frag.numel] = shard
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(whole, group=getattr(p, "ds_process_group", None))
        return whole.view(full_shape(p))

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """Temporarily load the EMA weights into the module (e.g. for validation); collective
        when several ranks run: every rank must enter it."""
        held = [i for i, p in enumerate(self.params) if p.numel()]  # whole tensors held here
        whole = {i: self._whole(i) for i in held}
        saved = {i: self.params[i].data.clone() for i in held}
        parts = [local_view(p, f) for p, f in zip(self.params, self.fragments)]
        saved_parts = [v.clone() if hasattr(p, "ds_tensor") else None
                       for p, v in zip(self.params, parts)]  # fmt: skip
        with torch.no_grad():
            for p, part, s in zip(self.params, parts, self.shadow):
                if hasattr(p, "ds_tensor"):
                    part.copy_(s)
            for i, value in whole.items():
                self.params[i].data.copy_(value)
        try:
            yield
        finally:
            with torch.no_grad():
                for part, old in zip(parts, saved_parts):
                    if old is not None:
                        part.copy_(old)
                for i, old in saved.items():
                    self.params[i].data.copy_(old)


def consolidate_ema(shards: list[dict]) -> dict[str, torch.Tensor]:
    """Join per-rank EMA states (:meth:`ShardedEMA.state_dict`, any order) into whole float32
    tensors by name."""
    if not shards:
        raise ValueError("no EMA shards to consolidate")
    out = {}
    for i, name in enumerate(shards[0]["names"]):
        shape = shards[0]["shape"][i]
        numel = int(torch.Size(shape).numel())
        pieces = [(s["start"][i], s["shadow"][i]) for s in shards]
        out[name] = join_fragments(pieces, numel, name).view(shape)
    return out
