"""Residual diffusion (CorrDiff, Mardani et al. 2024): a diffusion run that names a trained
regression run learns r = (x - mu(c) - m) / s, where mu(c) is the regression mean of the
condition c and (m, s) per channel are the residual's statistics over the training times;
mu(c) is also given to the diffusion backbone as extra condition channels. Sampling inverts
it: x = s r + m + mu(c).

* :func:`load_regression` - the regression run's EMA weights, frozen as a snapshot in the
  residual run's directory (``regression.mdlus``) so the run does not change under it;
* :class:`RegressionMean` - mu(c) of training windows (whole grids), cached per time;
* :func:`residual_stats` - (m, s) streamed over the training times, one time at a time
  (sums of r and r^2 over valid points, added over ranks), kept in ``residual_stats.json``;
* :class:`ResidualInputs` - a batch's (x0, weight, condition) for the objective.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from hpcdiff.config import ConfigError
from hpcdiff.core import Module
from hpcdiff.data import Batch, DataStream
from hpcdiff.data.stats import write_stats
from hpcdiff.distributed.collectives import barrier, sum_over_ranks
from hpcdiff.experiment.conditioning import condition_of
from hpcdiff.experiment.regression import RegressionObjective, regression_mean

SNAPSHOT = "regression.mdlus"
STATS = "residual_stats.json"


def consolidated_model(ckpt: Path, output: Path) -> Any:
    """The consolidated objective of checkpoint ``ckpt`` (EMA weights when saved) on every
    rank, in evaluation mode (collective; ``ckpt`` verified by the caller): rank 0 merges the
    shards into ``output`` once, or not at all when ``output`` already holds them, and every
    rank loads that file."""
    from hpcdiff.distributed import consolidate_once

    return Module.from_checkpoint(consolidate_once(ckpt, output)).train(False)


def check_regression_run(cfg: Any, reg_cfg: Any, where: str) -> None:
    """ConfigError unless ``reg_cfg`` is a regression run on the data layout of ``cfg``."""
    key = "config key 'objective.regression_run'"
    if reg_cfg.objective.kind != "regression":
        raise ConfigError(f"{key}: {where} is a {reg_cfg.objective.kind} run, not a regression")
    for name in ("variables", "condition_variables", "static_variables", "patch_shape"):
        ours, theirs = list(getattr(cfg.data, name)), list(getattr(reg_cfg.data, name))
        if ours != theirs:
            raise ConfigError(f"{key}: data.{name} of {where} is {theirs}, this run has {ours}")


def load_regression(cfg: Any, run_dir: Path, rank: int) -> RegressionObjective:
    """The regression objective of ``objective.regression_run`` (collective): the snapshot
    ``<run_dir>/regression.mdlus`` if the run has one, else its newest verified checkpoint,
    consolidated into that snapshot."""
    from hpcdiff.distributed import find_latest
    from hpcdiff.experiment.config import load_config

    snapshot = Path(run_dir) / SNAPSHOT
    barrier()  # every rank decides before rank 0 may write the snapshot
    have = snapshot.is_file()
    barrier()
    if have:
        return Module.from_checkpoint(snapshot).train(False)
    where = str(cfg.objective.regression_run)
    if not (Path(where) / "config.yaml").is_file():
        raise ConfigError(
            f"config key 'objective.regression_run': {where} is not a run directory (no "
            "config.yaml); train the regression run first"
        )
    reg_cfg = load_config(Path(where) / "config.yaml")
    check_regression_run(cfg, reg_cfg, where)
    ckpt = find_latest(Path(where) / reg_cfg.checkpoint.dir)  # collective
    if ckpt is None:
        raise ConfigError(
            f"config key 'objective.regression_run': {where} has no complete checkpoint"
        )
    if rank == 0:
        snapshot.parent.mkdir(parents=True, exist_ok=True)
    return consolidated_model(ckpt, snapshot)


def sampling_patching(sample_cfg: Any) -> dict:
    """The patch grid of a regression mean: the ``sample`` section's (a residual run keeps the
    one it trained with in ``residual_stats.json`` as ``mean_patching``, and samples with it
    whatever the ``sample`` overrides, so the mean added back is the mean subtracted)."""
    s = sample_cfg
    return {"overlap_pix": s.overlap_pix, "boundary_pix": s.boundary_pix, "window": s.window,
            "chunk_size": s.chunk_size}  # fmt: skip


def read_stats(run_dir: Path, sample_cfg: Any) -> tuple[dict, dict]:
    """(statistics, patch grid of the mean) of a residual run from its
    ``residual_stats.json``, ({}, the ``sample`` section's grid) when there is none yet."""
    path = Path(run_dir) / STATS
    stats = json.loads(path.read_text()) if path.is_file() else {}
    return stats, stats.get("mean_patching", sampling_patching(sample_cfg))


class RegressionMean:
    """mu(c) (B, C, H, W) of whole-grid windows, one entry per time index kept while the
    cache holds less than ``cache_bytes``."""

    def __init__(self, regression: RegressionObjective, patching: dict, cache_bytes: int):
        for p in regression.parameters():
            p.requires_grad_(False)
        self.model, self.patching, self.cache_bytes = regression.model, patching, cache_bytes
        self.cache: dict[int, torch.Tensor] = {}
        self.cached_bytes = 0

    def __call__(self, condition: torch.Tensor | None, time_index: torch.Tensor, C: int, shape):
        times = [int(t) for t in time_index]
        missing = [b for b, t in enumerate(times) if t not in self.cache]
        fresh = {}
        if missing:
            cond = None if condition is None else condition[missing]
            means = regression_mean(self.model, cond, C, tuple(shape), self.patching)
            fresh = {times[b]: means[i] for i, b in enumerate(missing)}
            for t, mean in fresh.items():
                size = mean.numel() * mean.element_size()
                if self.cached_bytes + size <= self.cache_bytes:
                    self.cache[t], self.cached_bytes = mean, self.cached_bytes + size
        means = [self.cache[t] if t in self.cache else fresh[t] for t in times]
        return torch.stack(means)  # (B, C, H, W)


class ResidualInputs:
    """(x0, weight, condition) of a residual diffusion batch: x0 = (x - mu - m) / s, the
    condition [c, mu] (``stats``: m and s, (C,) tensors)."""

    def __init__(self, mean: RegressionMean, stats: tuple[torch.Tensor, torch.Tensor]):
        self.mean, self.stats = mean, stats

    def __call__(self, batch: Batch, condition: torch.Tensor | None):
        mu = self.mean(condition, batch.time_index, batch.data.shape[1], batch.data.shape[-2:])
        m, s = (v.to(mu.device).view(1, -1, 1, 1) for v in self.stats)
        x0 = (batch.data - mu - m) / s
        condition = mu if condition is None else torch.cat([condition, mu], dim=1)
        return x0, batch.mask.float(), condition


def plain_inputs(batch: Batch, condition: torch.Tensor | None):
    """(x0, weight, condition) of a plain diffusion or regression batch."""
    return batch.data, batch.mask.float(), condition


def residual_stats(stream: DataStream, inputs_of, device: torch.device) -> dict:
    """Per-channel mean and std of mu-subtracted targets over one pass of ``stream`` (this
    rank's share of the training times), reduced over all ranks: {"mean": [...], "std":
    [...], "count": [...]}. ``inputs_of(batch)`` -> (x - mu, weight)."""
    sums = None  # (3, C) float64: valid points, sum r, sum r^2
    for batch in stream:
        r, weight = inputs_of(batch.to(device))
        part = torch.stack([weight.sum((0, 2, 3)), (r * weight).sum((0, 2, 3)),
                            (r * r * weight).sum((0, 2, 3))]).double()  # fmt: skip
        sums = part if sums is None else sums + part
    stream.close()
    if sums is None:
        raise ValueError("residual statistics: this rank has no training time")
    n, s1, s2 = sum_over_ranks(sums)
    mean = s1 / n.clamp(min=1)
    std = (s2 / n.clamp(min=1) - mean**2).clamp(min=0).sqrt()
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    return {"mean": mean.tolist(), "std": std.tolist(), "count": n.tolist()}


def residual_setup(cfg: Any, part: Any, sources: dict, run_dir: Path, device, rank: int):
    """The :class:`ResidualInputs` of a residual run: the regression snapshot, and the
    residual statistics read from ``<run_dir>/residual_stats.json`` or streamed over the
    training times (then written there by rank 0)."""
    regression = load_regression(cfg, run_dir, rank).to(device)
    path = Path(run_dir) / STATS
    barrier()
    stats, patching = read_stats(run_dir, cfg.sample)
    have = bool(stats)
    barrier()
    mean = RegressionMean(regression, patching, cfg.objective.mean_cache_mib * 2**20)
    if not have:
        data = dataclasses.replace(cfg.data, valid_time=cfg.data.train_time, prefetch=1)
        stream = DataStream(data, split="valid", dp_rank=part.group, dp_size=part.groups,
                            tile=part.window, sources=sources)  # fmt: skip
        zero = (torch.zeros(len(cfg.data.variables)), torch.ones(len(cfg.data.variables)))
        centred = ResidualInputs(mean, zero)

        def inputs_of(batch):
            x0, weight, _ = centred(batch, condition_of(batch))
            return x0, weight

        stats = {**residual_stats(stream, inputs_of, device), "mean_patching": patching}
        if rank == 0:
            write_stats(stats, path)  # atomically: a stopped start leaves no half file
    tensors = (torch.tensor(stats["mean"], dtype=torch.float32),
               torch.tensor(stats["std"], dtype=torch.float32))  # fmt: skip
    return ResidualInputs(mean, tensors)
