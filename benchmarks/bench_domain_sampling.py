"""Domain-decomposed multi-diffusion sampling: time per solver step at 1 and 2 ranks (torchrun,
gloo, CPU), speed-up, parallel efficiency, halo bytes sent per step, peak RSS per rank, and the
check that both runs give the same samples.

    python benchmarks/bench_domain_sampling.py                      # 2 x 256 x 256, 4 steps
    python benchmarks/bench_domain_sampling.py --shape 1024 1024 --steps 8

Ranks run this file with ``--worker``; the driver launches them and prints ratios measured in
the same run (absolute times on a shared machine are noisy).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

MODEL = {
    "name": "SongUNet-S",
    "args": {"model_channels": 16, "channel_mult": [1, 2], "num_blocks": 1,
             "attn_resolutions": []},
    "positional_embedding": "sinusoidal",
    "channels_positional_embedding": 4,
}  # fmt: skip


def worker(args: argparse.Namespace) -> None:
    """One rank: sample its tile, time the steps, save tile and statistics."""
    from hpcdiff.diffusion.multi_diffusion import MultiDiffusionPredictor
    from hpcdiff.diffusion.noise_schedulers import EDMNoiseScheduler
    from hpcdiff.distributed.domain import DomainMesh, HaloStats
    from hpcdiff.distributed.runtime import init_distributed, shutdown
    from hpcdiff.generate.distributed import sample_tiled
    from hpcdiff.train.build import build_inference_model

    ctx = init_distributed()
    shape, patch = tuple(args.shape), (args.patch, args.patch)
    torch.manual_seed(0)
    model = build_inference_model(
        MODEL, {"preconditioner": "edm", "sigma_data": 1.0}, shape, patch, args.channels, 0
    ).eval()
    predictor = MultiDiffusionPredictor(model, chunk_size=args.chunk)
    predictor.set_patching(args.overlap, 0)
    mesh = DomainMesh.from_process_group((1, ctx.env.world_size), shape)
    seeds = list(range(args.batch))
    sample_tiled(predictor, mesh, EDMNoiseScheduler(), seeds, args.channels, 2, args.solver)
    HaloStats.sent_bytes = 0  # warm-up done: count and time the real run only
    start = time.perf_counter()
    x = sample_tiled(
        predictor, mesh, EDMNoiseScheduler(), seeds, args.channels, args.steps, args.solver
    )
    elapsed = time.perf_counter() - start
    stats = {
        "tile": [mesh.tile.row0, mesh.tile.row1, mesh.tile.col0, mesh.tile.col1],
        "step_s": elapsed / args.steps,
        "halo_bytes_per_step": HaloStats.sent_bytes / args.steps,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    out = Path(args.out)
    torch.save({"x": x, **{k: torch.tensor(v) for k, v in stats.items()}},
               out / f"r{ctx.env.rank}.pt")  # fmt: skip
    shutdown()


def launch(ranks: int, args: argparse.Namespace, out: Path) -> list[dict]:
    """Run the worker under torchrun with ``ranks`` processes; their saved results."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc-per-node", str(ranks), __file__, "--worker", "--out", str(out),
           "--shape", *map(str, args.shape), "--patch", str(args.patch),
           "--overlap", str(args.overlap), "--channels", str(args.channels),
           "--batch", str(args.batch), "--steps", str(args.steps), "--solver", args.solver,
           *(["--chunk", str(args.chunk)] if args.chunk else [])]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one core per rank: compare like with like
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{ranks}-rank run failed:\n{proc.stderr[-4000:]}")
    return [torch.load(out / f"r{r}.pt", weights_only=True) for r in range(ranks)]


def assemble(results: list[dict], args: argparse.Namespace) -> torch.Tensor:
    full = torch.zeros(args.batch, args.channels, *args.shape)
    for res in results:
        r0, r1, c0, c1 = res["tile"].tolist()
        full[..., r0:r1, c0:c1] = res["x"]
    return full


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=int, nargs=2, default=[256, 256])
    p.add_argument("--patch", type=int, default=64)
    p.add_argument("--overlap", type=int, default=8)
    p.add_argument("--channels", type=int, default=2)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--solver", default="euler")
    p.add_argument("--chunk", type=int, default=16)
    p.add_argument("--worker", action="store_true")
    p.add_argument("--out")
    args = p.parse_args()
    if args.worker:
        return worker(args)
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for ranks in (1, 2):
            out = Path(tmp) / f"ranks{ranks}"
            out.mkdir()
            runs[ranks] = launch(ranks, args, out)
    step = {n: max(float(r["step_s"]) for r in res) for n, res in runs.items()}
    x1, x2 = assemble(runs[1], args), assemble(runs[2], args)
    rel = float((x1 - x2).abs().max() / x1.abs().max())
    H, W = args.shape
    print(f"grid {args.batch} x {args.channels} x {H} x {W}, patch {args.patch}, overlap "
          f"{args.overlap}, {args.steps} {args.solver} steps, SongUNet-S (tiny)")  # fmt: skip
    for n, res in runs.items():
        halo = sum(float(r["halo_bytes_per_step"]) for r in res) / 2**20
        rss = ", ".join(f"{float(r['peak_rss_mib']):.0f}" for r in res)
        print(f"  {n} rank(s): {step[n]:.3f} s/step, halo sent {halo:.2f} MiB/step (all "
              f"ranks), peak RSS per rank [{rss}] MiB")  # fmt: skip
    speedup = step[1] / step[2]
    print(f"  speed-up 2 vs 1 rank: {speedup:.2f}x, parallel efficiency {speedup / 2:.0%}")
    print(f"  max |x(2 ranks) - x(1 rank)| / max |x| = {rel:.2e} (identical within 1e-5: "
          f"{rel <= 1e-5})")  # fmt: skip
    print(json.dumps({"step_s": step, "speedup": speedup, "max_rel_diff": rel}))


if __name__ == "__main__":
    main()
