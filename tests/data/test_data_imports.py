"""hpcdiff.data takes rank, world and tile as arguments: it imports no distributed library."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
FORBIDDEN = ("torch.distributed", "deepspeed", "mpi4py")


def test_data_package_imports_no_distributed_code():
    offenders = []
    for path in sorted((ROOT / "hpcdiff" / "data").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            offenders += [
                f"{path.name}: {n}" for n in names if any(n.startswith(bad) for bad in FORBIDDEN)
            ]
    assert offenders == []


def test_worker_side_modules_do_not_load_torch_or_dask():
    """A data worker process imports only numpy/netCDF4 code (fast spawn, small RSS)."""
    code = (
        "import sys, hpcdiff.data.prefetch\n"
        "print(sorted(m for m in ('torch', 'dask', 'xarray', 'deepspeed', 'mpi4py')"
        " if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
