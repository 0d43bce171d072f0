"""Compiled vs eager backbones (``model.compile`` / ``sample.compile``) on this machine: training
step (forward + backward of the DSM loss, :class:`DiffusionObjective`) and tiled sampling
(``sample_tiled``, Heun), for SongUNet and DiT, one thread.

For each model a worker process (a fresh process: nothing compiled yet) times the eager step,
the first compiled call (compile time), the compiled step, and the largest difference between
the compiled and eager results (loss map, gradients, samples) from the same weights and noise.
It runs twice per model with the same cache directory: "cold" (empty cache) and "warm" (what
every later rank or restart of a run sees, cf. :func:`hpcdiff.compiling.use_run_cache`).
Speed-ups are ratios of times measured in the same process.

    python benchmarks/bench_compile.py                       # SongUNet (quickstart) and DiT
    python benchmarks/bench_compile.py --models songunet --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

MODELS = {
    "songunet": {
        "name": "SongUNet-S",
        "args": {"model_channels": 16, "channel_mult": [1, 2], "num_blocks": 1,
                 "attn_resolutions": [8]},
    },  # the quickstart's backbone
    "dit": {"name": "DiT-S/4", "args": {"depth": 4}},  # DiT-S/4 width and heads, 4 blocks
}  # fmt: skip
GRID, PATCH, C, CC = (64, 64), (32, 32), 4, 6


def build(kind: str):
    import torch

    from hpcdiff.experiment.build import DiffusionObjective, build_inference_model

    torch.manual_seed(0)
    spec = {**MODELS[kind], "positional_embedding": "sinusoidal",
            "channels_positional_embedding": 4}  # fmt: skip
    edm = {"preconditioner": "edm", "sigma_data": 1.0}
    model = build_inference_model(spec, edm, GRID, PATCH, C, CC)
    return DiffusionObjective(model, patch_shape=PATCH, patches_per_sample=4)


def train_step(objective, batch):
    import torch

    torch.manual_seed(1)  # same patch corners and diffusion times for eager and compiled
    objective.zero_grad(set_to_none=True)
    loss = objective(*batch)
    loss.mean().backward()
    grads = {n: p.grad.detach().clone() for n, p in objective.named_parameters()
             if p.grad is not None}  # fmt: skip
    return loss.detach(), grads


def sample_step(objective, cond, steps: int):
    import torch
    from tensordict import TensorDict

    from hpcdiff.diffusion.multi_diffusion import MultiDiffusionPredictor
    from hpcdiff.distributed.domain import DomainMesh
    from hpcdiff.generate.distributed import sample_tiled
    from hpcdiff.generate.tiled import TiledMultiDiffusionPredictor

    mesh = DomainMesh((1, 1), GRID, 0, 1)
    pred = MultiDiffusionPredictor(objective.model)
    pred.set_patching(8, 0)
    E = cond.shape[0]
    tiled = TiledMultiDiffusionPredictor(
        pred, mesh, condition=TensorDict({"condition": cond}, batch_size=[E])
    )
    with torch.no_grad():
        return sample_tiled(tiled, mesh, objective.scheduler, list(range(E)), C, steps, "heun")


def timed(f, repeats: int):
    """(result of the first call, its seconds, median seconds of the next ``repeats``)."""
    t0 = time.perf_counter()
    out = f()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return out, first, sorted(times)[len(times) // 2]


def worker(kind: str, repeats: int, steps: int) -> dict:
    import torch

    from hpcdiff.compiling import compile_network

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(2, C, *GRID, generator=g)
    batch = (x0, torch.ones_like(x0), torch.randn(2, CC, *GRID, generator=g))
    cond = torch.randn(2, CC, *GRID, generator=g)
    objective = build(kind)
    (loss_e, grads_e), _, train_eager = timed(lambda: train_step(objective, batch), repeats)
    # Sampling sets grid patching on the model: the eager run uses a twin (same weights).
    x_e, _, sample_eager = timed(lambda: sample_step(build(kind), cond, steps), 1)
    compile_network(objective.model)
    (loss_c, grads_c), train_first, train_comp = timed(lambda: train_step(objective, batch),
                                                       repeats)  # fmt: skip
    x_c, sample_first, sample_comp = timed(lambda: sample_step(objective, cond, steps), 1)

    def rel(a, b):
        return float((a - b).abs().max() / b.abs().max())

    # Gradients: the largest difference over all parameters relative to the largest gradient
    # (a parameter whose gradient is ~0 would make a per-parameter ratio meaningless).
    assert grads_c.keys() == grads_e.keys()
    top = max(float(g.abs().max()) for g in grads_e.values())
    grad_diff = max(float((grads_c[n] - g).abs().max()) for n, g in grads_e.items()) / top

    return {
        "params": sum(p.numel() for p in objective.parameters()),
        "train_eager": train_eager, "train_compiled": train_comp,
        "train_compile_s": train_first - train_comp,
        "sample_eager": sample_eager, "sample_compiled": sample_comp,
        "sample_compile_s": sample_first - sample_comp,
        "loss_rel": rel(loss_c, loss_e), "grad_rel": grad_diff,
        "sample_rel": rel(x_c, x_e),
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=4, help="Heun steps of the sampling run")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.repeats, args.steps)))
        return
    print(f"grid {GRID}, patches {PATCH}, {C}+{CC} channels, 2 samples x 4 patches per training "
          f"step, {args.steps} Heun steps x 2 members sampling; one thread")  # fmt: skip
    print(f"{'model':>9} {'cache':>5} {'params':>9} | {'train eager':>11} {'compiled':>8} "
          f"{'speed-up':>8} {'compile s':>9} | {'sample eager':>12} {'compiled':>8} "
          f"{'speed-up':>8} {'compile s':>9} | max rel diff: loss, grad, sample")  # fmt: skip
    for kind in args.models:
        with tempfile.TemporaryDirectory() as cache:
            for state in ("cold", "warm"):
                env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, "OMP_NUM_THREADS": "1"}
                cmd = [sys.executable, __file__, "--worker", kind, "--repeats",
                       str(args.repeats), "--steps", str(args.steps)]  # fmt: skip
                out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                train = r["train_eager"] / r["train_compiled"]
                samp = r["sample_eager"] / r["sample_compiled"]
                print(f"{kind:>9} {state:>5} {r['params']:>9,} | {r['train_eager']:11.3f} "
                      f"{r['train_compiled']:8.3f} {train:7.2f}x {r['train_compile_s']:9.1f} | "
                      f"{r['sample_eager']:12.3f} {r['sample_compiled']:8.3f} {samp:7.2f}x "
                      f"{r['sample_compile_s']:9.1f} | {r['loss_rel']:9.1e} {r['grad_rel']:9.1e} "
                      f"{r['sample_rel']:9.1e}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
