"""Training throughput of the real trainer for DiT and UNet backbones at ZeRO stages 0-3.

    python benchmarks/bench_train_throughput.py                  # unet + dit, stages 0-3, 2 ranks
    python benchmarks/bench_train_throughput.py --models dit --stages 0,3 --steps 12

Writes a small synthetic dataset with ``hpcdiff data synth`` into a temporary directory, then
runs ``torchrun -m hpcdiff train --config <base>.yaml zero.stage=S ...`` once per backbone and
stage (CPU-cheap sizes by default; ``--grid``, ``--patch``, ``--batch-size`` to scale up) and
reads the run's ``metrics.jsonl`` (one record per step). The first ``--warmup`` steps are
excluded; s/step is the median of the remaining step intervals (robust on a shared machine).

Per-rank bytes: ``estimate`` is the trainer's own ``zero_memory_per_rank_mib`` (parameters,
gradients and Adam state, as ``--dry-run`` prints it); ``ckpt`` is measured: the largest
per-rank share of the DeepSpeed checkpoint the run wrote (this rank's ZeRO shard files plus the
module state that stages 0-2 replicate on every rank), i.e. the parameters and optimizer state
a rank holds. Throughput and bytes are printed as ratios to ZeRO-0 of the same backbone,
measured in the same run (absolute timings on a shared machine are noisy).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
MiB = 2**20

# Backbones: (named size, constructor overrides); small enough for a few CPU steps.
MODELS = {
    "unet": ("SongUNet-S", {"model_channels": 16, "channel_mult": [1, 2], "num_blocks": 1,
                            "attn_resolutions": [8]}),
    "dit": ("DiT-S/4", {"hidden_size": 128, "depth": 4, "num_heads": 4}),
}  # fmt: skip


def write_dataset(work: Path, grid: int, times: int) -> dict:
    """``hpcdiff data synth`` into ``work/data``; returns its ``data:`` section."""
    cmd = [sys.executable, "-m", "hpcdiff", "data", "synth", "--out", str(work / "data"),
           "--shape", str(grid), str(grid), "--times", str(times), "--files", "2"]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, env=_env())
    return yaml.safe_load((work / "data" / "data.yaml").read_text())["data"]


def base_config(work: Path, data: dict, args: argparse.Namespace, model: str) -> Path:
    """One experiment file per backbone; the stage comes as an override."""
    name, model_args = MODELS[model]
    data = {**data, "batch_size": args.batch_size, "patch_shape": [args.patch, args.patch],
            "patches_per_sample": args.patches_per_sample}  # fmt: skip
    cfg = {
        "run": {"out_dir": str(work / "runs"), "steps": args.steps, "log_every": 1,
                "val_every": 0},
        "data": data,
        "model": {"name": name, "args": model_args},
        "optim": {"lr": 1e-4},
        "zero": {"precision": args.precision},
        "checkpoint": {"every_steps": args.steps, "keep_last": 1, "resume": "none"},
    }  # fmt: skip
    path = work / f"{model}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _env() -> dict[str, str]:
    return dict(
        os.environ,
        OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        PYTHONWARNINGS="ignore",
    )


def train(config: Path, run_name: str, stage: int, ranks: int) -> dict:
    """Launch the trainer; returns its start-up summary line (parameters, memory estimate)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc-per-node", str(ranks), "-m", "hpcdiff", "train", "--config", str(config),
           f"run.name={run_name}", f"zero.stage={stage}"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=config.parent)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-4000:]}")
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith('{"run_dir"'))
    return json.loads(line)


def step_seconds(run_dir: Path, warmup: int) -> list[float]:
    """Wall time of each step after the warm-up, from the per-step metrics records."""
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    t = {r["step"]: r["time_s"] for r in rows if "loss" in r}
    return [t[s] - t[s - 1] for s in sorted(t) if s > warmup and s - 1 in t]


def checkpoint_bytes_per_rank(run_dir: Path, ranks: int) -> int:
    """Largest per-rank share of the newest checkpoint's DeepSpeed files (see module doc)."""
    (ckpt,) = sorted((run_dir / "checkpoints").glob("step_*"))[-1:]
    files = json.loads((ckpt / "manifest.json").read_text())["files"]
    ds = {name: f["bytes"] for name, f in files.items() if name.startswith("ds/")}
    replicated = sum(b for n, b in ds.items() if re.fullmatch(r"ds/mp_rank_\d+_model_states.pt", n))
    shares = [
        replicated + sum(b for n, b in ds.items() if n.startswith(f"ds/zero_pp_rank_{r}_"))
        for r in range(ranks)
    ]
    return max(shares)


def measure(config: Path, model: str, stage: int, args: argparse.Namespace) -> dict:
    name = f"{model}_zero{stage}"
    summary = train(config, name, stage, args.ranks)
    run_dir = config.parent / "runs" / name
    steps = step_seconds(run_dir, args.warmup)
    s_step = statistics.median(steps)
    samples = args.batch_size * args.ranks
    return {
        "model": model,
        "backbone": summary["backbone"],
        "stage": stage,
        "params": summary["trainable_parameters"],
        "s_step": s_step,
        "samples_s": samples / s_step,
        "patches_s": samples * args.patches_per_sample / s_step,
        "est_mib": summary["zero_memory_per_rank_mib"],
        "ckpt_mib": checkpoint_bytes_per_rank(run_dir, args.ranks) / MiB,
    }


def _ratio(value: float, base: float | None) -> str:
    return f"{value / base:8.2f}" if base else f"{'-':>8}"


def report(rows: list[dict], args: argparse.Namespace) -> None:
    print(
        f"\n{args.ranks} ranks, {args.precision}, grid {args.grid}^2, patch {args.patch}^2, "
        f"{args.batch_size} samples x {args.patches_per_sample} patches per rank and step, "
        f"median of {args.steps - args.warmup} steps after {args.warmup} warm-up"
    )
    for model in dict.fromkeys(r["model"] for r in rows):
        name, overrides = MODELS[model]
        print(f"  {model}: {name} with {overrides}")
    print(
        f"{'backbone':<12} {'params':>8} {'stage':>5} {'s/step':>8} {'samples/s':>9} "
        f"{'patches/s':>9} {'/ZeRO-0':>8} {'est MiB':>8} {'ckpt MiB':>8} {'/ZeRO-0':>8}"
    )
    for row in rows:
        base = next((r for r in rows if r["model"] == row["model"] and r["stage"] == 0), None)
        print(
            f"{row['backbone']:<12} {row['params'] / 1e6:7.2f}M {row['stage']:>5} "
            f"{row['s_step']:8.3f} {row['samples_s']:9.2f} {row['patches_s']:9.1f} "
            f"{_ratio(row['patches_s'], base and base['patches_s'])} {row['est_mib']:8.2f} "
            f"{row['ckpt_mib']:8.2f} {_ratio(row['ckpt_mib'], base and base['ckpt_mib'])}"
        )
    print("(throughput /ZeRO-0 > 1: faster than unsharded; bytes /ZeRO-0 < 1: less memory)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="unet,dit", help=f"subset of {sorted(MODELS)}")
    parser.add_argument("--stages", default="0,1,2,3")
    parser.add_argument("--steps", type=int, default=10, help="steps per run, warm-up included")
    parser.add_argument("--warmup", type=int, default=3, help="first steps not timed")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--grid", type=int, default=64, help="synthetic grid size")
    parser.add_argument("--patch", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=2, help="samples per rank and step")
    parser.add_argument("--patches-per-sample", type=int, default=4)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--keep", help="keep data and runs in this directory")
    args = parser.parse_args(argv)
    models = args.models.split(",")
    stages = [int(s) for s in args.stages.split(",")]
    if unknown := sorted(set(models) - set(MODELS)):
        parser.error(f"--models: unknown {unknown}; choose from {sorted(MODELS)}")
    if args.steps < args.warmup + 2:
        parser.error(f"--steps {args.steps} must exceed --warmup {args.warmup} by at least 2")

    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        work = Path(args.keep or tmp).resolve()
        work.mkdir(parents=True, exist_ok=True)
        data = write_dataset(work, args.grid, times=16)
        rows = []
        for model in models:
            config = base_config(work, data, args, model)
            for stage in stages:
                rows.append(measure(config, model, stage, args))
                print(json.dumps(rows[-1]), flush=True)
        report(rows, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
