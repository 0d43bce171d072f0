"""Time to write and to resume a checkpoint (resharding included) versus model size, and
checkpoint bytes per parameter at several rank counts.

    python benchmarks/bench_checkpoint.py                     # 2 ranks ZeRO-2, 3 model sizes
    python benchmarks/bench_checkpoint.py --sizes 4 32 --ranks 4
    python benchmarks/bench_checkpoint.py --ema-ranks 1 2 4    # EMA bytes per rank at ZeRO-2

Started without a launcher, the program relaunches itself with ``launchers/torchrun.sh`` for
each phase: train one step and save on ``--ranks`` ranks at ZeRO-2; resume on the same ranks
and stage; resume on one rank at ZeRO-3 (resharded). The baseline, measured in the same run by
the parent process, is ``torch.save`` + fsync of the same float32 state (weights, two Adam
moments, EMA) as one file, then ``torch.load`` of it: the raw cost of the bytes. Ratios above 1
are checkpoint overhead (hashing, manifest, gathers, resharding copies).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _model(million: float):
    import torch

    width = 1024
    layers = max(1, round(million * 1e6 / (width * width + width)))
    return torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])


def _worker(args) -> None:
    import torch

    from hpcdiff.distributed.checkpoint import load_checkpoint, save_checkpoint, step_dir
    from hpcdiff.distributed.config import DistConfig, EMAConfig, ZeroConfig
    from hpcdiff.distributed.ema import ShardedEMA
    from hpcdiff.distributed.engine import build_engine
    from hpcdiff.distributed.runtime import init_distributed, shutdown
    from hpcdiff.experiment.config import OptimConfig

    ctx = init_distributed(DistConfig(timeout_s=600))
    torch.manual_seed(0)
    engine = build_engine(_model(args.million), ZeroConfig(stage=args.stage), OptimConfig(), 1, ctx)
    ema = ShardedEMA(engine.module, EMAConfig(decay=0.999))
    if args.phase == "save":
        engine.backward(engine(torch.randn(1, 1024)).square().mean())
        engine.step()
        ema.update(0, 1)
        torch.distributed.barrier()
        t0 = time.perf_counter()
        save_checkpoint(engine, args.dir, 1, ema)
        seconds = time.perf_counter() - t0
    else:
        torch.distributed.barrier()
        t0 = time.perf_counter()
        load_checkpoint(engine, step_dir(args.dir, 1), ema)
        torch.distributed.barrier()
        seconds = time.perf_counter() - t0
    if ctx.env.rank == 0:
        Path(args.out).write_text(json.dumps({"seconds": seconds}))
    shutdown()


def _launch(phase: str, million: float, ranks: int, stage: int, ckpt: Path, out: Path) -> float:
    env = dict(
        os.environ,
        NPROC_PER_NODE=str(ranks),
        HPCDIFF_PYTHON=sys.executable,
        HPCDIFF_SCRIPT=str(Path(__file__).resolve()),
        OMP_NUM_THREADS="1",
        PYTHONWARNINGS="ignore",
    )
    argv = ["--worker", "--phase", phase, "--million", str(million), "--stage", str(stage),
            "--dir", str(ckpt), "--out", str(out)]  # fmt: skip
    subprocess.run([str(ROOT / "launchers" / "torchrun.sh"), *argv], env=env, check=True,
                   capture_output=True)  # fmt: skip
    return json.loads(out.read_text())["seconds"]


def _baseline(million: float, path: Path) -> tuple[float, float]:
    """Seconds to save + fsync and to load the same float32 state as one plain file."""
    import torch

    params = [p.detach() for p in _model(million).parameters()]
    state = {f"{k}{i}": p.clone() for i, p in enumerate(params) for k in ("w", "m", "v", "e")}
    t0 = time.perf_counter()
    with open(path, "wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    save = time.perf_counter() - t0
    t0 = time.perf_counter()
    torch.load(path, weights_only=True)
    return save, time.perf_counter() - t0


def _ema_scaling(ranks: list[int], work: Path) -> None:
    """EMA bytes held and saved per rank, and checkpoint bytes in all, per parameter."""
    import torch

    n = sum(p.numel() for p in _model(4.0).parameters())
    print(f"{'ranks':>5} {'EMA B/param/rank':>16} {'x 1 rank':>8} {'ckpt B/param':>12}")
    first = None
    for world in ranks:
        ckpt = work / f"r{world}"
        _launch("save", 4.0, world, 2, ckpt, work / "out.json")
        state = torch.load(next(ckpt.glob("step_*/state/rank_00000.pt")), weights_only=True)
        ema = 4 * state["ema"].numel() / n  # float32
        first = first or ema
        total = sum(p.stat().st_size for p in ckpt.rglob("*") if p.is_file()) / n
        print(f"{world:5d} {ema:16.2f} {ema / first:8.2f} {total:12.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[4.0, 16.0, 64.0],
                        help="model sizes in millions of parameters")  # fmt: skip
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--ema-ranks", type=int, nargs="+",
                        help="instead: EMA and checkpoint bytes per parameter at ZeRO-2 on these "
                        "rank counts (4 M parameters)")  # fmt: skip
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--million", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--stage", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return _worker(args)
    work = Path(tempfile.mkdtemp(prefix="bench_ckpt_"))
    if args.ema_ranks:
        try:
            return _ema_scaling(args.ema_ranks, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    try:
        print(f"{'params':>8} {'MiB':>7} {'B/param':>8} {'save s':>7} {'x raw':>6} "
              f"{'resume s':>8} {'x raw':>6} {'reshard s':>9} {'x raw':>6}")  # fmt: skip
        for million in args.sizes:
            ckpt, out = work / f"m{million}", work / "out.json"
            save = _launch("save", million, args.ranks, 2, ckpt, out)
            same = _launch("load", million, args.ranks, 2, ckpt, out)
            reshard = _launch("load", million, 1, 3, ckpt, out)
            files = [p for p in ckpt.rglob("*") if p.is_file()]
            size = sum(p.stat().st_size for p in files)
            n = sum(p.numel() for p in _model(million).parameters())
            raw_save, raw_load = _baseline(million, work / "raw.pt")
            print(f"{n / 1e6:7.1f}M {size / 2**20:7.1f} {size / n:8.2f} {save:7.2f} "
                  f"{save / raw_save:6.2f} {same:8.2f} {same / raw_load:6.2f} {reshard:9.2f} "
                  f"{reshard / raw_load:6.2f}", flush=True)  # fmt: skip
            shutil.rmtree(ckpt)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
