"""launchers/mpirun.sh picks the MPI named by HPCDIFF_MPI whatever the PATH order, says which
one it runs, and mpi4py in the ranks loads that same MPI."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PROBE = """
import json
from mpi4py import MPI
from hpcdiff.distributed.env import resolve_env
env = resolve_env()
print(json.dumps({"rank": env.rank, "world": env.world_size, "launcher": env.launcher,
                  "mpi": MPI.Get_library_version().splitlines()[0],
                  "mpi4py_rank": MPI.COMM_WORLD.Get_rank()}))
"""


def _launch(tmp_path, kind, path_first=None):
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    env = {**os.environ, "NP": "2", "HPCDIFF_SCRIPT": str(script), "HPCDIFF_MPI": kind,
           "PYTHONPATH": str(ROOT), "HPCDIFF_PYTHON": sys.executable}  # fmt: skip
    env["PATH"] = f"{path_first or BIN}{os.pathsep}{env['PATH']}"
    env.pop("MPIRUN", None)
    return subprocess.run(
        [str(ROOT / "launchers" / "mpirun.sh")], env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


@pytest.mark.multiprocess
@pytest.mark.parametrize(
    "kind, banner, library",
    [("mpich", "MPICH", "MPICH"), ("openmpi", "Open MPI", "Open MPI")],
)
def test_hpcdiff_mpi_picks_the_mpi_whatever_the_path_order(tmp_path, kind, banner, library):
    if kind == "openmpi" and not (shutil.which("mpirun.openmpi") or shutil.which("orterun")):
        pytest.skip("Open MPI is not installed (scripts/ci_services.sh start installs it)")
    out = _launch(tmp_path, kind)  # the venv's MPICH mpirun comes first on PATH
    assert out.returncode == 0, out.stderr
    said = [line for line in out.stderr.splitlines() if line.startswith("launchers/mpirun.sh:")]
    assert len(said) == 1 and f": {banner}, " in said[0] and "2 ranks" in said[0]
    # one JSON object per rank; two ranks' lines can arrive joined on one line (MPICH)
    rows = sorted((json.loads(obj) for obj in re.findall(r"\{[^{}]*\}", out.stdout)),
                  key=lambda r: r["rank"])  # fmt: skip
    assert [r["rank"] for r in rows] == [0, 1] and all(r["world"] == 2 for r in rows)
    assert all(library in r["mpi"] and r["mpi4py_rank"] == r["rank"] for r in rows)


def test_unknown_choice_is_a_usage_error(tmp_path):
    out = _launch(tmp_path, "lam")
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "launchers/mpirun.sh: error: HPCDIFF_MPI=lam is not one of openmpi, mpich, auto"
    )
