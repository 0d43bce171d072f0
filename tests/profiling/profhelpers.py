"""Helpers shared by the profiling tests (imported through conftest's sys.path entry)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PROFILING = ROOT / "profiling"
TORCHRUN = [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2"]
STEPS = 2


def run(cmd, cwd, env=None, timeout=300, check=True):
    """Run ``cmd``; with ``check``, fail with its output when it exits non-zero."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{BIN}:{os.environ['PATH']}",
                **(env or {})}  # fmt: skip
    out = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=full_env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    if check and out.returncode != 0:
        raise AssertionError(f"{cmd} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out


DOCTOR = [str(BIN / "hpcdiff"), "profile", "doctor"]
NSYS = ["nsys", "profile", "-t", "nvtx,osrt", "-s", "none", "--cpuctxsw=none", "-f", "true"]
