"""``hpcdiff sample``: generate ensembles from a trained run with multi-diffusion sampling.

Single process: the global state of one validation time (E members) lives on one device and
is denoised as an overlapping grid of patches fused at every solver step
(``MultiDiffusionPredictor``). Results go to ``<run>/samples/samples.nc`` (CF metadata,
physical units, truth alongside) and one PNG per variable.

Noise is keyed by (``sample.seed``, time, member), never by process, so a rerun reproduces
the same ensemble.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
from tensordict import TensorDict

from hpcdiff import nvtx
from hpcdiff.data import DataStream
from hpcdiff.data.normalize import Normalizer
from hpcdiff.diffusion._tensor import bcast
from hpcdiff.diffusion.multi_diffusion import MultiDiffusionPredictor
from hpcdiff.diffusion.samplers import sample
from hpcdiff.diffusion.utils import StackedRandomGenerator
from hpcdiff.train.build import DiffusionObjective
from hpcdiff.train.config import TrainConfig, load_config
from hpcdiff.train.loop import condition_of


def load_trained(run_dir: Path, cfg: TrainConfig, weights: str = "auto") -> DiffusionObjective:
    """Consolidate the newest verified checkpoint of the run (EMA weights when present)."""
    from hpcdiff.distributed import consolidate_checkpoint, find_latest

    ckpt = find_latest(run_dir / cfg.checkpoint.dir)
    if ckpt is None:
        raise FileNotFoundError(f"{run_dir / cfg.checkpoint.dir}: no complete checkpoint")
    path = consolidate_checkpoint(ckpt, run_dir / "model.mdlus", weights=weights)
    return DiffusionObjective.from_checkpoint(path).eval()


@torch.no_grad()
def generate_members(
    objective: DiffusionObjective, condition: torch.Tensor | None, shape, cfg: TrainConfig,
    seeds: list[int],
) -> torch.Tensor:  # fmt: skip
    """E = len(seeds) samples (E, C, H, W) of one time, given its condition (1, Cc, H, W)."""
    s, E = cfg.sample, len(seeds)
    model, scheduler = objective.model, objective.scheduler
    cond = None
    if condition is not None:
        cond = TensorDict({"condition": condition.expand(E, -1, -1, -1)}, batch_size=[E])
    predictor = MultiDiffusionPredictor(model, condition=cond, chunk_size=s.chunk_size)
    predictor.set_patching(s.overlap_pix, s.boundary_pix, window=s.window)
    denoiser = scheduler.get_denoiser(x0_predictor=predictor)
    tN = scheduler.timesteps(s.num_steps)[0].expand(E)
    eps = StackedRandomGenerator("cpu", seeds).randn((E, *shape))
    xN = eps * bcast(scheduler.sigma(tN), eps)
    with nvtx.range("sample"):
        return sample(denoiser, xN, scheduler, s.num_steps, solver=s.solver)


def generate(run_dir: str | Path, overrides: list[str] = ()) -> dict:
    """Sample ``sample.ensemble`` members for the first ``sample.times`` validation times."""
    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "config.yaml", list(overrides))
    objective = load_trained(run_dir, cfg)
    data_cfg = dataclasses.replace(cfg.data, batch_size=1, prefetch=1, workers=0)
    truths, members, times = [], [], []
    with contextlib.closing(DataStream(data_cfg, split="valid")) as stream:
        for _, batch in zip(range(cfg.sample.times), stream):
            seeds = [
                cfg.sample.seed * 1_000_003 + int(batch.time_index[0]) * 1000 + e
                for e in range(cfg.sample.ensemble)
            ]
            x = generate_members(objective, condition_of(batch), batch.data.shape[1:], cfg, seeds)
            members.append(x.numpy())
            truths.append(np.where(batch.mask[0].numpy(), batch.data[0].numpy(), np.nan))
            times.append(int(batch.time_index[0]))
        source = stream.sources["target"]
    norm = Normalizer.from_file(
        cfg.data.stats_file, "target", cfg.data.variables, cfg.data.log1p_variables
    )
    ens = norm.denormalize(np.stack(members, axis=1), axis=2)  # (E, T, C, H, W)
    truth = norm.denormalize(np.stack(truths), axis=1)  # (T, C, H, W)
    out_dir = run_dir / "samples"
    out_dir.mkdir(exist_ok=True)
    from hpcdiff.generate.output import plot_samples, write_netcdf

    nc = write_netcdf(out_dir / "samples.nc", ens, truth, times, cfg.data.variables, source)
    pngs = plot_samples(out_dir, ens, truth, cfg.data.variables)
    result = {"netcdf": str(nc), "plots": [str(p) for p in pngs], "times": times,
              "ensemble": cfg.sample.ensemble}  # fmt: skip
    (out_dir / "summary.json").write_text(json.dumps(result, indent=1))
    return result
