"""House rule: model, diffusion and core code never import distributed or I/O libraries."""

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PURE = ["hpcdiff/core", "hpcdiff/diffusion", "hpcdiff/models"]
FORBIDDEN = ("torch.distributed", "deepspeed", "mpi4py", "netCDF4", "dask", "xarray")


def _imports(path: pathlib.Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


@pytest.mark.parametrize("package", PURE)
def test_pure_packages_do_not_import_distributed_or_io_code(package):
    offenders = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for name in _imports(path)
        if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN)
    ]
    assert offenders == []


def test_importing_the_pure_api_loads_none_of_them():
    code = (
        "import sys, pkgutil, importlib, hpcdiff.core, hpcdiff.diffusion\n"
        "for pkg in ('hpcdiff.diffusion', 'hpcdiff.models'):\n"
        "    try:\n"
        "        mod = importlib.import_module(pkg)\n"
        "    except ModuleNotFoundError:\n"
        "        continue\n"
        "    for info in pkgutil.walk_packages(mod.__path__, pkg + '.'):\n"
        "        importlib.import_module(info.name)\n"
        "bad = ('deepspeed', 'mpi4py', 'netCDF4', 'dask', 'xarray')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
