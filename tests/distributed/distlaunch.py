"""Helpers of the multi-process tests: environment and launch of the tiny training worker."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
WORKER = HERE / "distworker.py"
LAUNCH_TIMEOUT = 300  # seconds; a hang fails the test instead of blocking CI

_LAUNCHER_VARS = ("SLURM_", "OMPI_", "PMI_", "PMIX_", "MV2_", "MPI_LOCAL", "HPCDIFF_", "MASTER_")
_LAUNCHER_NAMES = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"}


def worker_env(**extra: str) -> dict[str, str]:
    """Environment for launched ranks: this interpreter, the worker script, one thread each,
    and none of the launcher variables this test process may itself have inherited."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(_LAUNCHER_VARS) and k not in _LAUNCHER_NAMES
    }
    env.update(
        HPCDIFF_PYTHON=sys.executable,
        HPCDIFF_SCRIPT=str(WORKER),
        OMP_NUM_THREADS="1",
        PYTHONWARNINGS="ignore::FutureWarning",
    )
    env.update(extra)
    return env


def run(cmd: list[str], env: dict[str, str], timeout: float = LAUNCH_TIMEOUT):
    """Run a launcher command; fail with its output when it exits non-zero."""
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if proc.returncode != 0:
        pytest.fail(f"{cmd} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def read_result(path: Path) -> dict:
    """The worker's JSON with integer stage and step keys."""
    data = json.loads(path.read_text())
    data["runs"] = {int(s): r for s, r in data["runs"].items()}
    for r in data["runs"].values():
        r["losses"] = {int(k): v for k, v in r["losses"].items()}
    return data


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spawn_ranks(
    args: list[str], world: int = 2, script: Path = WORKER, extra_env: dict | None = None
) -> list[subprocess.Popen]:
    """Start ``world`` plain `python` ranks of ``script`` wired by the HPCDIFF_* variables
    (plus ``extra_env``)."""
    port = str(free_port())
    procs = []
    for rank in range(world):
        env = worker_env(
            HPCDIFF_RANK=str(rank),
            HPCDIFF_WORLD_SIZE=str(world),
            HPCDIFF_LOCAL_RANK=str(rank),
            HPCDIFF_LOCAL_WORLD_SIZE=str(world),
            HPCDIFF_MASTER_ADDR="127.0.0.1",
            HPCDIFF_MASTER_PORT=port,
            **(extra_env or {}),
        )
        cmd = [sys.executable, str(script), *args]
        procs.append(
            subprocess.Popen(
                cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    return procs


_DONE_STATES = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
}


def sbatch(args: list[str], env: dict[str, str], log: Path, timeout: float = LAUNCH_TIMEOUT):
    """Submit a batch job and wait for it by polling `scontrol` (faster than `sbatch --wait`,
    which backs off to 30 s polls); fail with the job's output unless it completed."""
    submit = run(["sbatch", "--parsable", f"--output={log}", *args], env)
    job = submit.stdout.strip().split(";")[0]
    deadline = time.monotonic() + timeout
    state = "UNKNOWN"
    while time.monotonic() < deadline:
        show = subprocess.run(
            ["scontrol", "-o", "show", "job", job], env=env, capture_output=True, text=True
        )
        fields = dict(f.split("=", 1) for f in show.stdout.split() if "=" in f)
        state = fields.get("JobState", "UNKNOWN")
        if state in _DONE_STATES:
            break
        time.sleep(0.25)
    text = log.read_text() if log.exists() else "<no output>"
    if state != "COMPLETED":
        subprocess.run(["scancel", job], env=env, capture_output=True)
        pytest.fail(f"batch job {job} ended {state}:\n{text[-6000:]}")
    return text
