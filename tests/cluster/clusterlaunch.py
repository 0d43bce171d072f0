"""Helpers of the multi-node tests: start commands on the nodes of scripts/ci_cluster.sh, wait
for them, read what each rank recorded and the losses a run logged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SCRIPT = ROOT / "scripts" / "ci_cluster.sh"
AGENT = ROOT / "scripts" / "ci_cluster_rsh.sh"
NODES = ("node1", "node2")
TIMEOUT = 240  # seconds per launch: a hang fails the test instead of blocking CI

_LAUNCHER_VARS = ("SLURM_", "OMPI_", "PMI_", "PMIX_", "MV2_", "MPI_LOCAL", "HPCDIFF_", "MASTER_")
_LAUNCHER_NAMES = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK"}
_IFNAMES = {"GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"}


@dataclass
class Cluster:
    """The running cluster: its Slurm config and a way to run commands on its nodes."""

    slurm_conf: str

    def env(self, records: Path, **extra: str) -> dict[str, str]:
        """Environment of a launch: this interpreter, hpcdiff under the recorder, one thread per
        rank, none of the launcher or interface variables this process may have inherited."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(_LAUNCHER_VARS) and k not in _LAUNCHER_NAMES | _IFNAMES
        }
        records.mkdir(parents=True, exist_ok=True)
        env.update(
            HPCDIFF_PYTHON=sys.executable,
            HPCDIFF_SCRIPT=str(HERE / "noderecord.py"),
            NODERECORD_DIR=str(records),
            OMP_NUM_THREADS="1",
            PYTHONWARNINGS="ignore::FutureWarning",
            SLURM_CONF=self.slurm_conf,
        )
        env.update(extra)
        return env

    def popen(self, node: str, cmd: list[str], env: dict, cwd: Path, log: Path):
        """Start ``cmd`` on ``node`` in its own process group, output to ``log``."""
        with log.open("w") as out:
            return subprocess.Popen(
                [str(SCRIPT), "exec", node, *map(str, cmd)],
                env=env,
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def run(self, node: str, cmd: list[str], env: dict, cwd: Path, log: Path) -> str:
        """Run ``cmd`` on ``node``; fail with its output unless it exits 0."""
        proc = self.popen(node, cmd, env, cwd, log)
        wait_all([proc], [log])
        return log.read_text()


def wait_all(procs: list[subprocess.Popen], logs: list[Path], timeout: float = TIMEOUT) -> None:
    """Wait for every process; on a non-zero exit or a timeout kill the rest and fail."""
    deadline = time.monotonic() + timeout
    try:
        for proc in procs:
            proc.wait(timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
        pass
    codes = [proc.poll() for proc in procs]
    if any(code != 0 for code in codes):
        for proc in procs:
            kill_group(proc)
        text = "\n".join(f"--- {log.name}\n{log.read_text()[-4000:]}" for log in logs)
        pytest.fail(f"exit codes {codes} (None: still running after {timeout} s)\n{text}")


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group a launch started in (its launcher and every rank)."""
    try:
        os.killpg(proc.pid, 9)
    except ProcessLookupError:
        return
    proc.wait()


def read_records(records: Path, world: int) -> list[dict]:
    return [json.loads((records / f"rank{r}.json").read_text()) for r in range(world)]


def losses(run_dir: Path) -> dict[int, float]:
    """Loss per step from metrics.jsonl; a step logged again after a resume wins."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}
