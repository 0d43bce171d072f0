"""Read a checkpoint's fragments back into an engine of any rank count and ZeRO stage.

Every rank memory-maps the saved per-rank state files and copies out exactly the ranges it
holds now (its partition at ZeRO 1-3, whole tensors of the weights for its module and, at
ZeRO-0, of the Adam state), so what was saved comes back bit for bit, resharded.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Any

import torch

from hpcdiff.distributed.ema import ShardedEMA
from hpcdiff.distributed.shards import MOMENTS, EngineShards, full_shape

log = logging.getLogger(__name__)


class SavedState:
    """Index of the fragments in the per-rank state files of one checkpoint."""

    def __init__(self, path: Path, manifest: dict) -> None:
        from hpcdiff.distributed.checkpoint import CheckpointError

        self.path = path
        self.shapes = manifest["params"]
        self.files = [
            torch.load(path / "state" / f"rank_{r:05d}.pt", weights_only=True, mmap=True)
            for r in range(int(manifest["world_size"]))
        ]  # memory-mapped: a rank reads only the ranges it copies out
        self.index: dict[str, list[tuple[int, int, int, int]]] = {n: [] for n in self.shapes}
        for r, state in enumerate(self.files):
            offsets = torch.cumsum(state["numel"], 0) - state["numel"]
            for name, start, numel, offset in zip(
                state["names"], state["start"].tolist(), state["numel"].tolist(), offsets.tolist()
            ):
                if numel:
                    self.index[name].append((start, numel, r, offset))
        for name, frags in self.index.items():
            frags.sort()
            covered = 0
            for start, numel, *_ in frags:
                if start != covered:
                    break
                covered += numel
            if covered != torch.Size(self.shapes[name]).numel():
                raise CheckpointError(
                    f"{path}: the saved fragments of {name!r} cover {covered} of "
                    f"{torch.Size(self.shapes[name]).numel()} elements (starts "
                    f"{[f[0] for f in frags][:8]}): a rank's state file is missing or foreign"
                )

    def read(self, name: str, key: str, start: int, numel: int) -> torch.Tensor:
        """Elements ``[start, start + numel)`` of the flattened saved tensor ``key`` of
        parameter ``name`` (``fp32``, ``exp_avg``, ``exp_avg_sq`` or ``ema``)."""
        pieces, end = [], start + numel
        for s, n, r, offset in self.index[name]:
            lo, hi = max(s, start), min(s + n, end)
            if lo < hi:
                flat = self.files[r][key]
                pieces.append(flat[offset + lo - s : offset + hi - s])
        return torch.cat(pieces) if pieces else torch.zeros(0)


def _check_params(path: Path, manifest: dict, shards: EngineShards) -> None:
    from hpcdiff.distributed.checkpoint import CheckpointError

    saved = manifest["params"]
    mine = {n: full_shape(p) for n, p in zip(shards.names, shards.params)}
    missing, unknown = sorted(set(mine) - set(saved)), sorted(set(saved) - set(mine))
    if missing or unknown:
        raise CheckpointError(
            f"{path} holds other parameters than this model: missing {missing[:4]}, "
            f"not in the model {unknown[:4]} (a different model config?)"
        )
    for name, shape in mine.items():
        if list(saved[name]) != shape:
            raise CheckpointError(
                f"{path}: parameter {name!r} has shape {saved[name]} there, {shape} in this "
                "model (a different model config?)"
            )


def _restore_counters(engine: Any, counters: dict) -> None:
    for key in ("global_steps", "global_samples", "skipped_steps"):
        if hasattr(engine, key):
            setattr(engine, key, int(counters.get(key, 0)))
    scaler = getattr(engine.optimizer, "loss_scaler", None)
    for key, value in counters.get("loss_scale", {}).items():
        if scaler is not None and hasattr(scaler, key):
            setattr(scaler, key, value)


def _restore_fixed(module: torch.nn.Module, fixed: dict[str, torch.Tensor]) -> None:
    """Buffers and (whole-held) frozen parameters from ``module.pt``."""
    with torch.no_grad():
        for name, buf in module.named_buffers():
            if name in fixed:
                buf.copy_(fixed[name])
        for name, p in module.named_parameters():
            if not p.requires_grad and name in fixed and p.numel():
                p.data.copy_(fixed[name])


def restore_state(engine: Any, path: Path, manifest: dict, ema: ShardedEMA | None) -> None:
    """Load checkpoint ``path`` into ``engine`` (and ``ema``) on this rank (collective only
    through DeepSpeed's ZeRO-3 partition bookkeeping, which is local)."""
    from hpcdiff.distributed.checkpoint import load_torch

    shards = EngineShards(engine)
    _check_params(path, manifest, shards)
    saved = SavedState(path, manifest)
    shards.ensure_optimizer_state()
    for i, name in enumerate(shards.names):
        shards.write(i, partial(saved.read, name, "fp32"))
        for key in MOMENTS:
            shards.write(i, partial(saved.read, name, key), key)
        shards.write_module_weights(i, partial(saved.read, name, "fp32"))
    shards.set_adam_step(int(manifest["adam_step"]))
    if ema is not None:
        ema.load_fragments(lambda i, f: saved.read(ema.names[i], "ema", f.start, f.numel))
    _restore_fixed(engine.module, load_torch(path / "module.pt"))
    _restore_counters(engine, manifest.get("engine", {}))
