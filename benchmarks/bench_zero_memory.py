"""Per-rank bytes of parameters, gradients and optimizer state under ZeRO 0-3 on N ranks.

    python benchmarks/bench_zero_memory.py                    # DiT-S/4, fp32 and bf16, 2 ranks
    python benchmarks/bench_zero_memory.py --model SongUNet-S --precision bf16 --ranks 4

Started without a launcher, the program relaunches itself with ``launchers/torchrun.sh``. Each
rank builds the model, wraps it in a DeepSpeed engine at every stage, takes one optimizer step
and measures the partitions DeepSpeed really allocated (tensor storage sizes, not RSS, which
allocator caching and gather buffers blur), next to ``estimate_zero_memory``. Totals are printed
as ratios of ZeRO-0's measured in the same run.
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MiB = 2**20


def _relaunch(argv: list[str], ranks: int) -> int:
    env = dict(
        os.environ,
        NPROC_PER_NODE=str(ranks),
        HPCDIFF_PYTHON=sys.executable,
        HPCDIFF_SCRIPT=str(Path(__file__).resolve()),
        OMP_NUM_THREADS="1",
        PYTHONWARNINGS="ignore::FutureWarning",
    )
    return subprocess.call([str(ROOT / "launchers" / "torchrun.sh"), *argv], env=env)


def _measure(ctx, name: str, resolution: int, stage: int, precision: str):
    import torch

    from hpcdiff.distributed.config import ZeroConfig
    from hpcdiff.distributed.engine import build_engine
    from hpcdiff.distributed.memory import ZeroMemoryProbe
    from hpcdiff.experiment.config import OptimConfig
    from hpcdiff.models.registry import create_model
    from hpcdiff.train.loop import autocast

    torch.manual_seed(0)
    model = create_model(name, resolution=resolution, in_channels=4)
    num_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    engine = build_engine(
        model, ZeroConfig(stage=stage, precision=precision), OptimConfig(), 2, ctx
    )
    probe = ZeroMemoryProbe(engine)
    # fp32 inputs under autocast, as the trainer feeds the low-precision engine
    x = torch.randn(2, 4, resolution, resolution)
    with autocast(torch.device("cpu"), precision):
        loss = engine(x, torch.rand(2), None).float().square().mean()
    engine.backward(loss)
    engine.step()
    measured = probe.measure()
    engine.destroy()
    del engine, model, probe
    gc.collect()
    return num_params, measured


def _report(ctx, args) -> None:
    import torch.distributed as dist

    from hpcdiff.distributed.memory import estimate_zero_memory

    world = ctx.env.world_size
    for precision in args.precision.split(","):
        rows = []
        for stage in range(4):
            num_params, mem = _measure(ctx, args.model, args.resolution, stage, precision)
            per_rank: list = [None] * world
            dist.all_gather_object(per_rank, mem.total)
            rows.append(
                (
                    stage,
                    mem,
                    max(per_rank),
                    estimate_zero_memory(num_params, stage, world, precision),
                )
            )
        if ctx.env.rank != 0:
            continue
        print(
            f"\n{args.model} at {args.resolution}x{args.resolution}, {num_params / 1e6:.2f} M "
            f"parameters, {world} ranks, {precision}; MiB per rank (rank 0, measured)"
        )
        print(
            f"{'stage':>5} {'params':>9} {'grads':>9} {'optim':>9} {'total':>9} "
            f"{'max rank':>9} {'estimate':>9} {'/ZeRO-0':>8}"
        )
        base = rows[0][1].total
        for stage, mem, worst, est in rows:
            print(
                f"{stage:>5} {mem.params / MiB:9.2f} {mem.grads / MiB:9.2f} "
                f"{mem.optimizer / MiB:9.2f} {mem.total / MiB:9.2f} {worst / MiB:9.2f} "
                f"{est.total / MiB:9.2f} {mem.total / base:8.3f}"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="DiT-S/4")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--precision", default="fp32,bf16")
    parser.add_argument("--ranks", type=int, default=2)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if not any(
        v in os.environ
        for v in ("RANK", "HPCDIFF_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_STEP_ID")
    ):
        return _relaunch(argv, args.ranks)

    from hpcdiff.distributed.config import DistConfig
    from hpcdiff.distributed.runtime import init_distributed, shutdown

    ctx = init_distributed(DistConfig(timeout_s=300))
    _report(ctx, args)
    shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
