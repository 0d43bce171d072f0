"""Start-up of ``hpcdiff sample`` on N ranks (gloo, torchrun, one thread per rank): the time from
a started process group to the trained model loaded on every rank, for

* ``per-rank``: every rank merges the sharded checkpoint itself (what sampling did before:
  N merges of the same shards, each rank writing its own file);
* ``once``: rank 0 merges it into ``model.mdlus`` once and every rank loads that file
  (:func:`hpcdiff.distributed.consolidate_once`, no current ``model.mdlus`` present);
* ``reuse``: ``model.mdlus`` is already current (a second ``hpcdiff sample`` of the run):
  nothing is merged.

All three first verify the newest checkpoint collectively (``find_latest``), as sampling does.
The run directory is any trained run (``make quickstart`` writes ``runs/quickstart``); it is
copied first so its own ``model.mdlus`` is left alone. Ratios are against ``per-rank`` in the
same invocation; each mode runs ``--repeats`` times, alternating, and the median is printed.

    python benchmarks/bench_sample_startup.py runs/quickstart --ranks 4 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = ("per-rank", "once", "reuse")


def worker(run: Path, mode: str, out: Path) -> None:
    import torch.distributed as dist

    from hpcdiff.distributed import consolidate_checkpoint, consolidate_once, find_latest
    from hpcdiff.distributed.runtime import init_distributed, shutdown
    from hpcdiff.experiment.build import DiffusionObjective

    ctx = init_distributed()
    dist.barrier()
    start = time.perf_counter()
    ckpt = find_latest(run / "checkpoints")
    with tempfile.TemporaryDirectory() as tmp:
        if mode == "per-rank":  # verification inside is collective: every rank merges
            path = consolidate_checkpoint(ckpt, Path(tmp) / "model.mdlus", weights="auto")
        else:
            path = consolidate_once(ckpt, run / "model.mdlus")
        model = DiffusionObjective.from_checkpoint(path).train(False)
    dist.barrier()
    seconds = time.perf_counter() - start
    if ctx.env.rank == 0:
        params = sum(p.numel() for p in model.parameters())
        out.write_text(json.dumps({"seconds": seconds, "params": params}))
    shutdown()


def launch(run: Path, mode: str, ranks: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        torchrun = Path(sys.executable).parent / "torchrun"
        cmd = [str(torchrun), "--standalone", f"--nproc-per-node={ranks}", __file__,
               "--worker", str(run), "--mode", mode, "--out", str(out)]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        subprocess.run(cmd, check=True, env=env, capture_output=True)
        return json.loads(out.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", type=Path, nargs="?", help="a trained run directory (checkpoints/)")
    p.add_argument("--ranks", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args.worker, args.mode, args.out)
    if args.run is None:
        p.error("give a trained run directory")
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        shutil.copytree(args.run / "checkpoints", run / "checkpoints")
        times: dict[str, list[float]] = {m: [] for m in MODES}
        for _ in range(args.repeats):
            for mode in MODES:
                if mode == "once":
                    (run / "model.mdlus").unlink(missing_ok=True)
                result = launch(run, mode, args.ranks)
                times[mode].append(result["seconds"])
    base = statistics.median(times["per-rank"])
    print(f"run {args.run}: {result['params']:,} parameters, {args.ranks} ranks, "
          f"{args.repeats} repeats (median)")  # fmt: skip
    print(f"{'mode':>9} {'start-up s':>11} {'vs per-rank':>12}  all")
    for mode in MODES:
        med = statistics.median(times[mode])
        runs = " ".join(f"{t:.3f}" for t in times[mode])
        print(f"{mode:>9} {med:11.3f} {med / base:11.2f}x  {runs}")


if __name__ == "__main__":
    main()
