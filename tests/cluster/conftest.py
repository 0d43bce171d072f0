"""The multi-node cluster on this machine (scripts/ci_cluster.sh): two network-namespace nodes
with their own addresses and host names and a Slurm with one slurmd per node. Root only; the
cluster is torn down at the end of the session, also when a test fails."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the `clusterlaunch` helpers

from clusterlaunch import NODES, SCRIPT, Cluster


@pytest.fixture(scope="session")
def cluster():
    """Two nodes up (scripts/ci_cluster.sh up 2), down again at the end whatever happened."""
    if os.geteuid() != 0:
        pytest.skip("the multi-node cluster needs root (network namespaces, slurmd)")
    try:
        up = subprocess.run([SCRIPT, "up", str(len(NODES))], capture_output=True, text=True,
                            timeout=600)  # fmt: skip
        if up.returncode != 0:
            pytest.fail(f"scripts/ci_cluster.sh up failed:\n{up.stdout}\n{up.stderr}")
        line = subprocess.run([SCRIPT, "env"], capture_output=True, text=True).stdout.strip()
        yield Cluster(slurm_conf=line.split("=", 1)[1])
    finally:
        subprocess.run([SCRIPT, "down"], capture_output=True, timeout=300)
