"""Domain-decomposed multi-diffusion sampling on CPU (gloo, torchrun, one thread per rank): time
per solver step at 1 and 2 ranks, speed-up, parallel efficiency, halo bytes sent per step,
peak RSS per rank, and the check that both runs give the same samples; optionally the same
2-rank run without overlapping the halo exchange with interior patches, and the largest
square grid that samples within a total memory budget at 1 vs 2 ranks.

    python benchmarks/bench_domain_sampling.py                         # 2 x 4096 x 4096, 8 steps
    python benchmarks/bench_domain_sampling.py --shape 1024 1024 --steps 4 --compare-overlap
    python benchmarks/bench_domain_sampling.py --search --budget-gib 20 # memory search only

Ranks run this file with ``--worker``; the driver launches them and prints ratios measured in
the same run (absolute times on a shared machine are noisy). Memory probes run two Euler
steps (EDM's fewest) of a pointwise backbone by default (``--search-model``): the sampler's
state dominates, the model's activations are bounded by ``--chunk``. A probe whose ranks
together exceed the budget (RSS polled every 50 ms) is stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch

UNET = {
    "name": "SongUNet-S",
    "args": {"model_channels": 8, "channel_mult": [1, 1], "num_blocks": 1,
             "attn_resolutions": []},
    "positional_embedding": "sinusoidal",
    "channels_positional_embedding": 4,
}  # fmt: skip


def build_model(args: argparse.Namespace, shape: tuple[int, int]):
    """The small UNet of the trainer, or a pointwise backbone with the same embedding."""
    from hpcdiff.core import Module
    from hpcdiff.diffusion.multi_diffusion import MultiDiffusionModel2D
    from hpcdiff.experiment.build import build_inference_model
    from hpcdiff.experiment.config import DiffusionConfig, ModelConfig

    torch.manual_seed(0)
    patch, pe = (args.patch, args.patch), None if args.pe == "none" else args.pe
    if args.model == "unet":
        unet = ModelConfig(**{**UNET, "positional_embedding": pe})
        edm = DiffusionConfig(preconditioner="edm", sigma_data=1.0)
        return build_inference_model(unet, edm, shape, patch, args.channels, 0).eval()

    class Pointwise(Module):
        def __init__(self, channels: int) -> None:
            super().__init__()
            self.mix = torch.nn.Conv2d(channels + (4 if pe else 0), channels, 1)

        def forward(self, x, t, condition=None):
            h = x if condition is None else torch.cat([x, condition["positional_embedding"]], 1)
            return x / (1 + t.view(-1, 1, 1, 1) ** 2) + 0.1 * torch.tanh(self.mix(h))

    model = MultiDiffusionModel2D(Pointwise(args.channels), shape, positional_embedding=pe)
    model.set_random_patching(patch_shape=patch, patch_num=1)
    return model.eval()


def worker(args: argparse.Namespace) -> None:
    """One rank: sample its tile, time it, save statistics (and the tile with ``--save``)."""
    from hpcdiff.diffusion.multi_diffusion import MultiDiffusionPredictor
    from hpcdiff.diffusion.noise_schedulers import EDMNoiseScheduler
    from hpcdiff.distributed.collectives import barrier
    from hpcdiff.distributed.domain import DomainMesh, HaloStats
    from hpcdiff.distributed.runtime import init_distributed, shutdown
    from hpcdiff.generate.distributed import sample_tiled
    from hpcdiff.generate.tiled import TiledMultiDiffusionPredictor

    ctx = init_distributed()
    shape = tuple(args.shape)
    predictor = MultiDiffusionPredictor(build_model(args, shape), chunk_size=args.chunk)
    predictor.set_patching(args.overlap, 0)
    mesh = DomainMesh.from_process_group((1, ctx.env.world_size), shape)
    tiled = TiledMultiDiffusionPredictor(predictor, mesh, overlap=not args.no_overlap_comm)
    with torch.no_grad():  # warm-up: one model call on one chunk (embedding of one patch)
        rows = torch.zeros(args.chunk, args.channels, args.patch, args.patch)
        pe = None
        if predictor.has_pos_embd:
            at = torch.arange(args.patch)
            pe = predictor.positional_embedding_at(at, at).expand(args.chunk, -1, -1, -1)
        predictor.predict_rows(rows, torch.ones(args.chunk), 0, args.batch, pe)
    barrier()
    HaloStats.sent_bytes = 0
    start = time.perf_counter()
    seeds = list(range(args.batch))
    x = sample_tiled(tiled, mesh, EDMNoiseScheduler(), seeds, args.channels, args.steps,
                     args.solver)  # fmt: skip
    elapsed = time.perf_counter() - start
    stats = {
        "tile": [mesh.tile.row0, mesh.tile.row1, mesh.tile.col0, mesh.tile.col1],
        "step_s": elapsed / args.steps,
        "halo_bytes_per_step": HaloStats.sent_bytes / args.steps,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    out = Path(args.out)
    (out / f"r{ctx.env.rank}.json").write_text(json.dumps(stats))
    if args.save:
        torch.save(x, out / f"r{ctx.env.rank}.pt")
    shutdown()


def _worker_args(args: argparse.Namespace, out: Path, **override) -> list[str]:
    opts = {**vars(args), **override}
    cmd = ["--worker", "--out", str(out), "--shape", *map(str, opts["shape"])]
    for key in ("patch", "overlap", "channels", "batch", "steps", "solver", "chunk", "model", "pe"):
        cmd += [f"--{key}", str(opts[key])]
    cmd += ["--save"] * bool(opts.get("save")) + ["--no-overlap-comm"] * opts["no_overlap_comm"]
    return cmd


def launch(ranks: int, args: argparse.Namespace, budget_mib: float | None = None, **override):
    """Run the worker under torchrun with ``ranks`` processes: their statistics (and tiles),
    or None when together they exceeded ``budget_mib`` of RSS and were stopped."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            str(ranks),
            __file__,
            *_worker_args(args, Path(tmp), **override),
        ]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one core per rank: like with like
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)  # fmt: skip
        over = _watch(proc, budget_mib)
        stderr = proc.communicate()[1]
        if over:
            return None
        if proc.returncode != 0:
            sys.exit(f"{ranks}-rank run failed:\n{stderr[-4000:]}")
        results = [json.loads((Path(tmp) / f"r{r}.json").read_text()) for r in range(ranks)]
        if override.get("save", args.save):
            for r, res in enumerate(results):
                res["x"] = torch.load(Path(tmp) / f"r{r}.pt", weights_only=True)
        return results


def _watch(proc: subprocess.Popen, budget_mib: float | None) -> bool:
    """Wait for ``proc``; with a budget, stop its process group once the RSS of all its
    processes exceeds it (True then)."""
    if budget_mib is None:
        proc.wait()
        return False
    parent = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            procs = [parent, *parent.children(recursive=True)]
            rss = sum(p.memory_info().rss for p in procs) / 2**20
        except psutil.NoSuchProcess:
            continue
        if rss > budget_mib:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.05)
    return False


def assemble(results: list[dict], args: argparse.Namespace) -> torch.Tensor:
    full = torch.zeros(args.batch, args.channels, *args.shape)
    for res in results:
        r0, r1, c0, c1 = res["tile"]
        full[..., r0:r1, c0:c1] = res["x"]
    return full


def report(name: str, step: float, res: list[dict]) -> None:
    halo = sum(r["halo_bytes_per_step"] for r in res) / 2**20
    rss = ", ".join(f"{r['peak_rss_mib']:.0f}" for r in res)
    print(f"  {name}: {step:.3f} s/step, halo sent {halo:.3f} MiB/step (all ranks), "
          f"peak RSS per rank [{rss}] MiB")  # fmt: skip


def timing(args: argparse.Namespace) -> dict:
    """1- vs 2-rank sampling of the same grid (and 2 ranks without overlap)."""
    runs = {1: launch(1, args, save=True), 2: launch(2, args, save=True)}
    step = {n: max(r["step_s"] for r in res) for n, res in runs.items()}
    B, C, (H, W) = args.batch, args.channels, args.shape
    model = "small UNet " + json.dumps(UNET["args"]) if args.model == "unet" else "pointwise"
    model += f", positional embedding {args.pe}"
    print(
        f"grid {B} x {C} x {H} x {W} (B x C x H x W), patch {args.patch}, overlap "
        f"{args.overlap}, {args.steps} {args.solver} steps, chunk {args.chunk}, {model}"
    )
    for n, res in runs.items():
        report(f"{n} rank(s)", step[n], res)
    speedup = step[1] / step[2]
    print(f"  speed-up 2 vs 1 rank: {speedup:.2f}x, parallel efficiency {speedup / 2:.0%}")
    x1, x2 = assemble(runs[1], args), assemble(runs[2], args)
    rel = float((x1 - x2).abs().max() / x1.abs().max())
    print(f"  max |x(2 ranks) - x(1 rank)| / max |x| = {rel:.2e} (within 1e-5: {rel <= 1e-5})")
    out = {"step_s": step, "speedup": speedup, "efficiency": speedup / 2, "max_rel_diff": rel}
    if args.compare_overlap:
        plain = launch(2, args, save=True, no_overlap_comm=True)
        t = max(r["step_s"] for r in plain)
        report("2 ranks, halo exchange not overlapped", t, plain)
        rel = float((assemble(plain, args) - x2).abs().max() / x2.abs().max())
        print(f"  overlap gain: {t / step[2]:.3f}x (no-overlap / overlap time); max rel diff "
              f"{rel:.2e}")  # fmt: skip
        out["overlap_gain"] = t / step[2]
    return out


def probe(ranks: int, side: int, args: argparse.Namespace, budget_mib: float) -> list | None:
    res = launch(ranks, args, budget_mib, shape=[side, side], steps=2, solver="euler",
                 model=args.search_model, save=False)  # fmt: skip
    ok = res is not None and sum(r["peak_rss_mib"] for r in res) <= budget_mib
    total = "stopped" if res is None else f"{sum(r['peak_rss_mib'] for r in res):.0f} MiB"
    print(f"    {ranks} rank(s), {side} x {side}: total peak RSS {total} -> "
          f"{'fits' if ok else 'over budget'}", flush=True)  # fmt: skip
    return res if ok else None


def largest(ranks: int, args: argparse.Namespace, budget_mib: float) -> tuple | None:
    """(side, per-rank results) of the largest fitting square grid: grow the side by sqrt(2)
    until a probe misses, then bisect (multiples of 256)."""
    good, side = None, args.search_start
    while (res := probe(ranks, side, args, budget_mib)) is not None:
        good, side = (side, res), 256 * math.ceil(side * math.sqrt(2) / 256)
    bad = side
    for _ in range(args.search_refine):
        lo = good[0] if good else 0
        mid = 256 * ((lo + bad) // 512)
        if mid <= lo:
            break
        res = probe(ranks, mid, args, budget_mib)
        good, bad = ((mid, res), bad) if res is not None else (good, mid)
    return good


def search(args: argparse.Namespace) -> dict:
    """Largest square grid sampling two Euler steps within the budget at 1 and 2 ranks."""
    print(f"largest {args.channels}-channel square grid within {args.budget_gib} GiB total "
          f"(two Euler steps, {args.search_model} backbone, positional embedding {args.pe}, "
          f"patch {args.patch}, overlap {args.overlap}, chunk {args.chunk}):",
          flush=True)  # fmt: skip
    sides = {}
    for ranks in (1, 2):
        best = largest(ranks, args, args.budget_gib * 1024)
        sides[ranks] = None if best is None else best[0]
        if best is not None:
            side, res = best
            per_rank = ", ".join(f"{r['peak_rss_mib']:.0f}" for r in res)
            print(f"  {ranks} rank(s): {side} x {side} ({side**2 / 1e6:.1f} Mpoints), peak "
                  f"RSS per rank [{per_rank}] MiB", flush=True)  # fmt: skip
    return sides


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=int, nargs=2, default=[4096, 4096])
    p.add_argument("--patch", type=int, default=64)
    p.add_argument("--overlap", type=int, default=8)
    p.add_argument("--channels", type=int, default=2)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--solver", default="euler")
    p.add_argument("--chunk", type=int, default=16, help="patch rows per model call")
    p.add_argument("--model", choices=["unet", "pointwise"], default="unet")
    p.add_argument(
        "--pe",
        choices=["sinusoidal", "none"],
        default="sinusoidal",
        help="positional embedding of the model (4 channels, computed per run of patches)",
    )
    p.add_argument(
        "--compare-overlap",
        action="store_true",
        help="also time 2 ranks that wait for the halo before any patch",
    )
    p.add_argument("--search", action="store_true", help="only the memory search")
    p.add_argument("--with-search", action="store_true", help="timing, then the search")
    p.add_argument("--budget-gib", type=float, default=20.0)
    p.add_argument("--search-model", choices=["unet", "pointwise"], default="pointwise")
    p.add_argument("--search-start", type=int, default=2048)
    p.add_argument("--search-refine", type=int, default=2, help="bisection steps")
    p.add_argument("--worker", action="store_true")
    p.add_argument("--no-overlap-comm", action="store_true")
    p.add_argument("--save", action="store_true")
    p.add_argument("--out")
    args = p.parse_args()
    if args.worker:
        return worker(args)
    result = {} if args.search else timing(args)
    if args.search or args.with_search:
        result["largest_side"] = search(args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
