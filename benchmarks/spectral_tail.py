"""Where the flat tail of generated power spectra comes from: a measurement on a trained run.

For the first validation time of RUN_DIR (single process, whole grid):

1. the denoiser's error at the truth, x0_hat(x + sigma n, sigma) - x, for sigma from 0.002 to
   1 (EMA and raw weights): power in the top band of wavenumbers relative to the truth's;
2. samples drawn with the run's sampling settings and with one factor changed at a time
   (more steps, a higher sigma_min, Euler, raw instead of EMA weights, 2nd-order window):
   members' power in the top band relative to the truth's.

The top band is the upper quarter of the radial wavenumbers the truth resolves along an axis
(0.75 k_N < k <= k_N, k_N = min(H, W) / 2) plus the corners beyond k_N. A ratio >> 1 there,
flat in k, is the tail. Prints one line per setting; not a test (no assertions).

    python benchmarks/spectral_tail.py runs/quickstart [--members 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

import torch
from tensordict import TensorDict

from hpcdiff.core import Module
from hpcdiff.data import DataStream
from hpcdiff.diffusion.metrics import power_spectrum
from hpcdiff.diffusion.multi_diffusion import MultiDiffusionPredictor
from hpcdiff.diffusion.samplers import sample
from hpcdiff.distributed import consolidate_checkpoint, find_latest
from hpcdiff.experiment.conditioning import condition_of
from hpcdiff.experiment.config import load_config


def _bands(shape) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks over power_spectrum bins: top quarter up to the axis Nyquist, and corners."""
    k, _ = power_spectrum(torch.zeros(1, *shape))
    k_n = min(shape) / 2
    return (k > 0.75 * k_n) & (k <= k_n), k > k_n


def _ratios(field: torch.Tensor, truth: torch.Tensor) -> tuple[float, float]:
    """Per-channel mean over channels of band power(field) / band power(truth): (top, corners)
    as the max over channels (the worst variable)."""
    top, corner = _bands(truth.shape[-2:])
    _, p_f = power_spectrum(field.float())  # (..., C, nbins)
    _, p_t = power_spectrum(truth.float())
    p_f = p_f.reshape(-1, *p_f.shape[-2:]).mean(0)  # (C, nbins), mean over members
    p_t = p_t.reshape(-1, *p_t.shape[-2:]).mean(0)
    r_top = p_f[:, top].sum(1) / p_t[:, top].sum(1)
    r_corner = p_f[:, corner].sum(1) / p_t[:, corner].sum(1)
    return r_top, r_corner


def _load(run: Path, cfg, weights: str) -> Module:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.mdlus"
        consolidate_checkpoint(find_latest(run / cfg.checkpoint.dir), path, weights=weights)
        return Module.from_checkpoint(path).train(False)


def _predictor(objective, cond, E, s, window=None):
    cond = TensorDict({"condition": cond.expand(E, -1, -1, -1)}, batch_size=[E])
    pred = MultiDiffusionPredictor(objective.model, condition=cond, chunk_size=s.chunk_size)
    pred.set_patching(s.overlap_pix, s.boundary_pix, window=window or s.window)
    return pred


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--members", type=int, default=2)
    args = parser.parse_args()
    cfg = load_config(args.run_dir / "config.yaml")
    s, names = cfg.sample, cfg.data.variables
    data = dataclasses.replace(cfg.data, batch_size=1, prefetch=1, mode="tile")
    with DataStream(data, split="valid") as stream:
        batch = next(iter(stream))
    x, cond = batch.data, condition_of(batch)  # (1, C, H, W), (1, Cc, H, W)
    models = {w: _load(args.run_dir, cfg, w) for w in ("ema", "model")}
    fmt = "  ".join(f"{n}={{:.3g}}" for n in names)
    print(f"top band / corners: power ratio to the truth per variable ({', '.join(names)})")

    # 1. Denoiser error at the truth.
    torch.manual_seed(0)
    noise = torch.randn_like(x)
    for w, objective in models.items():
        pred = _predictor(objective, cond, 1, s)
        for sigma in (0.002, 0.01, 0.05, 0.2, 1.0):
            t = torch.full((1,), sigma)
            err = pred(x + sigma * noise, t) - x
            top, corner = _ratios(err, x)
            print(f"denoiser error {w:5s} sigma={sigma:<6} top: {fmt.format(*top.tolist())}"
                  f" | corners: {fmt.format(*corner.tolist())}")  # fmt: skip

    # 2. Samples: the run's settings, then one change at a time.
    E = args.members
    settings = {
        "as configured": {},
        "num_steps x3": {"num_steps": 3 * s.num_steps},
        "sigma_min 0.02": {"sigma_min": 0.02},
        "sigma_min 0.0002": {"sigma_min": 0.0002},
        "euler": {"solver": "euler"},
        "raw weights": {"weights": "model"},
        "cosine window": {"window": "cosine"},
    }
    for label, change in settings.items():
        objective = models[change.get("weights", "ema")]
        scheduler = objective.scheduler
        old = scheduler.sigma_min
        scheduler.sigma_min = change.get("sigma_min", old)
        pred = _predictor(objective, cond, E, s, change.get("window"))
        denoiser = scheduler.get_denoiser(x0_predictor=pred)
        torch.manual_seed(1)
        steps = change.get("num_steps", s.num_steps)
        tN = scheduler.timesteps(steps)[0]
        xN = scheduler.init_latents((x.shape[1], *x.shape[-2:]), tN.expand(E))
        out = sample(denoiser, xN, scheduler, steps, solver=change.get("solver", s.solver))
        scheduler.sigma_min = old
        top, corner = _ratios(out, x)
        print(f"samples {label:18s} top: {fmt.format(*top.tolist())}"
              f" | corners: {fmt.format(*corner.tolist())}")  # fmt: skip


if __name__ == "__main__":
    main()
