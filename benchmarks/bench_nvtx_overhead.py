"""Cost of hpcdiff's NVTX ranges: a small training step with ranges off, on without a tool, and
on with the recorder (profiling/nvtx_recorder.c) attached; plus the cost of one empty range.

Each mode runs in its own process (the NVTX injection is read once per process) with the same
seed and the same ranges as ``hpcdiff/train/loop.py`` (train.step > data/forward/loss/backward/
optim/ema). Prints ms per step, us per empty range, and ratios against "off" measured in the same
run. Run: ``python benchmarks/bench_nvtx_overhead.py [--steps 200] [--width 32]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = ("off", "nvtx, no tool", "nvtx + recorder")


def _measure(steps: int, width: int) -> dict:
    """Time the step loop and empty ranges in this process (ranges as HPCDIFF_NVTX says)."""
    import torch

    from hpcdiff import nvtx

    nvtx.configure()  # as the hpcdiff command does: HPCDIFF_NVTX chooses
    torch.manual_seed(0)
    torch.set_num_threads(1)
    # B=4, C=4, H=W=16 through a two-layer conv net of width D=width.
    net = torch.nn.Sequential(
        torch.nn.Conv2d(4, width, 3, padding=1),
        torch.nn.SiLU(),
        torch.nn.Conv2d(width, 4, 3, padding=1),
    )
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    ema = [p.detach().clone() for p in net.parameters()]
    batch = torch.randn(4, 4, 16, 16)

    def step() -> None:
        with nvtx.range("train.step"):
            with nvtx.range("train.data"):
                x = batch + 0.1 * torch.randn_like(batch)
            with nvtx.range("train.forward"):
                y = net(x)
            with nvtx.range("train.loss"):
                loss = (y - batch).square().mean()
            with nvtx.range("train.backward"):
                loss.backward()
            with nvtx.range("train.optim"):
                opt.step()
                opt.zero_grad(set_to_none=True)
            with nvtx.range("train.ema"):
                torch._foreach_lerp_(ema, [p.detach() for p in net.parameters()], 0.01)

    for _ in range(10):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    step_ms = (time.perf_counter() - t0) / steps * 1e3
    empty = nvtx.range("bench.empty")
    n = 20000
    t0 = time.perf_counter()
    for _ in range(n):
        with empty:
            pass
    range_us = (time.perf_counter() - t0) / n * 1e6
    return {"step_ms": step_ms, "range_us": range_us}


def _run_mode(mode: str, args: argparse.Namespace, lib: str, logs: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HPCDIFF_NVTX": "0" if mode == "off" else "1"}
    env.pop("NVTX_INJECTION64_PATH", None)
    if mode == "nvtx + recorder":
        env.update(NVTX_INJECTION64_PATH=lib, HPCDIFF_NVTX_LOG_DIR=logs)
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--steps",
        str(args.steps),
        "--width",
        str(args.width),
    ]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="best of N per mode")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_measure(args.steps, args.width)))
        return
    build = [str(ROOT / "profiling" / "build_recorder.sh")]
    lib = subprocess.run(build, check=True, capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as logs:
        best: dict[str, dict] = {}
        for _ in range(args.repeats):  # interleave modes so machine noise hits all of them
            for mode in MODES:
                r = _run_mode(mode, args, lib, logs)
                if mode not in best or r["step_ms"] < best[mode]["step_ms"]:
                    best[mode] = r
    base = best["off"]
    print(f"{'mode':<17}{'ms/step':>9}{'x off':>8}{'us/range':>10}")
    for mode in MODES:
        r = best[mode]
        print(f"{mode:<17}{r['step_ms']:>9.3f}{r['step_ms'] / base['step_ms']:>8.3f}"
              f"{r['range_us']:>10.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
