"""Per-rank bytes of parameters, gradients and optimizer state under ZeRO: estimate and measure.

The estimate follows the accounting of Rajbhandari et al. 2020 (ZeRO, Sec. 3) for Adam with
Psi parameters on N ranks, with what DeepSpeed actually allocates (measured): a separate fp32
master copy whenever the optimizer is partitioned (stages 1-3) or the model is not fp32, and
fp32 gradient partitions.

=====  ===========  =======================  ==============================
stage  parameters   gradients                optimizer (masters, Adam m, v)
=====  ===========  =======================  ==============================
0      p Psi        4 Psi (+2 Psi mixed)     8 Psi (+4 Psi mixed)
1      p Psi        p Psi (during backward)  12 Psi / N
2      p Psi        4 Psi / N                12 Psi / N
3      p Psi / N    4 Psi / N                12 Psi / N
=====  ===========  =======================  ==============================

with p = 4 bytes (fp32) or 2 (bf16, fp16). At N = 2 ZeRO-3 holds 0.625 of ZeRO-0 in fp32 and
0.45 in bf16. Activations and communication buffers are excluded.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

_MASTER_ATTRS = ("single_partition_of_fp32_groups", "fp32_partitioned_groups_flat", "fp32_groups")


@dataclass(frozen=True)
class ZeroMemory:
    """Bytes one rank holds for parameters, gradients and optimizer state (masters + moments)."""

    params: int
    grads: int
    optimizer: int

    @property
    def total(self) -> int:
        return self.params + self.grads + self.optimizer

    def describe(self) -> str:
        """One line, e.g. ``params 1.00 MiB + grads ... = 4.00 MiB per rank``."""
        parts = [f"{k} {_fmt(getattr(self, k))}" for k in ("params", "grads", "optimizer")]
        return f"{' + '.join(parts)} = {_fmt(self.total)} per rank"


def _fmt(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.2f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.2f} TiB"


def estimate_zero_memory(
    num_params: int, stage: int, world_size: int, precision: str = "fp32"
) -> ZeroMemory:
    """Per-rank bytes of ``num_params`` trainable parameters trained with Adam at ZeRO ``stage``.

    >>> estimate_zero_memory(1000, 0, 2).total, estimate_zero_memory(1000, 3, 2).total
    (16000, 10000)
    """
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"stage={stage!r} must be one of 0, 1, 2, 3")
    if world_size < 1:
        raise ValueError(f"world_size={world_size} must be >= 1")
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision={precision!r} must be one of fp32, bf16, fp16")
    psi, n = num_params, world_size
    p = 4 if precision == "fp32" else 2
    mixed = 0 if precision == "fp32" else 4  # fp32 masters / fp32 gradient copies
    shard = -(-psi // n)  # ceil: each rank's partition is padded to the same size
    if stage == 0:
        return ZeroMemory(p * psi, (4 + (2 if mixed else 0)) * psi, (8 + mixed) * psi)
    if stage == 1:
        return ZeroMemory(p * psi, p * psi, 12 * shard)
    if stage == 2:
        return ZeroMemory(p * psi, 4 * shard, 12 * shard)
    return ZeroMemory(p * shard, 4 * shard, 12 * shard)


def _storage_bytes(tensors: Iterable[torch.Tensor | None], exclude: set[int]) -> int:
    seen: dict[int, int] = {}
    for t in tensors:
        if t is None or t.numel() == 0:
            continue
        storage = t.untyped_storage()
        if storage.data_ptr() not in exclude:
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


class ZeroMemoryProbe:
    """Measure what a DeepSpeed engine really holds per rank (partition sizes, not RSS).

    Gradients are recorded when the optimizer steps next; call :meth:`measure` after a step.
    """

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
        self.grads = 0
        self.inner.register_step_pre_hook(self._record_grads)

    def _params(self) -> list[torch.Tensor]:
        return [getattr(p, "ds_tensor", p) for p in self.engine.module.parameters()]

    def _masters(self) -> list[torch.Tensor]:
        out = [p for g in self.inner.param_groups for p in g["params"]]
        for name in _MASTER_ATTRS:
            out.extend(t for t in getattr(self.engine.optimizer, name, []) if torch.is_tensor(t))
        return out

    def _record_grads(self, *_: Any) -> None:
        grads = [p.grad for p in self.engine.module.parameters()]
        grads += [p.grad for p in self._masters()]
        self.grads = _storage_bytes(grads, set())

    def measure(self) -> ZeroMemory:
        params = self._params()
        param_ptrs = {t.untyped_storage().data_ptr() for t in params if t.numel()}
        states = [
            v
            for s in self.inner.state.values()
            for v in s.values()
            if torch.is_tensor(v) and v.numel() > 1
        ]
        optimizer = _storage_bytes(self._masters() + states, param_ptrs)
        return ZeroMemory(_storage_bytes(params, set()), self.grads, optimizer)
