"""Fixtures of the multi-process tests: the one-node Slurm cluster, launches of the tiny
training worker under the real launchers, and the single-process PyTorch reference."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `distworker`, `distlaunch` helpers

import distworker
from distlaunch import ROOT, WORKER, read_result, run, worker_env


@pytest.fixture(scope="session")
def reference() -> dict[int, dict]:
    """The worker's training for 3 and 6 steps in this process with plain torch AdamW."""
    return {steps: distworker.reference_run(steps) for steps in (3, 6)}


@pytest.fixture(scope="session")
def slurm():
    """A real one-node Slurm (munge, slurmctld, slurmd), installed and started if needed;
    stopped at the end unless it was already running."""
    script = ROOT / "scripts" / "ci_services.sh"
    was_up = subprocess.run([script, "status"], capture_output=True).returncode == 0
    proc = subprocess.run([script, "start"], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"could not start Slurm: {proc.stdout}\n{proc.stderr}")
    line = subprocess.run([script, "env"], capture_output=True, text=True).stdout.strip()
    yield {"SLURM_CONF": line.split("=", 1)[1]}
    if not was_up:
        subprocess.run([script, "stop"], capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def torchrun_run(tmp_path_factory) -> dict:
    """torchrun, 2 ranks, ZeRO 0-3 in one launch; 6 steps, final checkpoint per stage."""
    out = tmp_path_factory.mktemp("torchrun")
    cmd = [
        str(ROOT / "launchers" / "torchrun.sh"),
        *("--out", str(out / "r.json"), "--stages", "0,1,2,3", "--steps", "6"),
        *("--ckpt-dir", str(out / "ckpt"), "--ckpt-every", "6"),
    ]
    run(cmd, worker_env(NPROC_PER_NODE="2"))
    return {"result": read_result(out / "r.json"), "ckpt": out / "ckpt"}


@pytest.fixture(scope="session")
def single_run(tmp_path_factory) -> dict:
    """Plain `python`, one process (no launcher), ZeRO-3; a checkpoint after every step, the
    newest two kept."""
    out = tmp_path_factory.mktemp("single")
    cmd = [
        sys.executable,
        str(WORKER),
        *("--out", str(out / "r.json"), "--stages", "3", "--steps", "3"),
        *("--ckpt-dir", str(out / "ckpt"), "--ckpt-every", "1", "--keep-last", "2"),
    ]
    run(cmd, worker_env())
    return {"result": read_result(out / "r.json"), "ckpt": out / "ckpt" / "stage3"}
