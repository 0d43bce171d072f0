"""The house's import rules, checked on the source tree (every import, also inside functions).

1. Layers, bottom to top; a module imports from its own package and from lower layers only
   (never from a sibling of its own layer, never upwards):

   * foundation: ``core`` (Module base), ``config`` (typed loading), ``logs``, ``progress``,
     ``extras``, ``nvtx`` (the range seam), ``lazy`` (package exports loaded on first use),
     ``compiling`` (torch.compile of backbones and its cache), the ``hpcdiff`` package itself;
   * math: ``diffusion`` (the PhysicsNeMo API), ``models`` (backbones);
   * data: ``data`` (NetCDF/Dask readers, tiles, normalization);
   * distributed: ``distributed`` (launchers, process groups, ZeRO engines, checkpoints);
   * experiment: ``experiment`` (config sections, objective and inference-model builders,
     conditioning, where a rank's patches lie);
   * evaluate: ``evaluate`` (scores and maps of fields against the truth; below the stages
     that produce fields, as ``generate`` draws its quick-look maps with its plots);
   * stages: ``train``, ``generate`` (neither imports the other);
   * cli: ``cli``, ``__main__`` and every command module (``*/cli.py``, ``*_cli.py``): a
     package's command line sits on top of everything, wherever its file lives.

2. Only ``hpcdiff/distributed/`` imports torch.distributed, DeepSpeed or mpi4py.
3. ``core``, ``diffusion`` and ``models`` import no distributed or I/O library (netCDF4,
   dask, xarray either), and importing them loads none.

Each rule is shown failing on a small source tree written for the purpose, and holding on the
real tree. docs/concepts.md ("How the code is layered") describes the same order.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

LAYERS = [
    (
        "foundation",
        {"", "core", "config", "logs", "progress", "extras", "nvtx", "lazy", "compiling"},
    ),
    ("math", {"diffusion", "models"}),
    ("data", {"data"}),
    ("distributed", {"distributed"}),
    ("experiment", {"experiment"}),
    ("evaluate", {"evaluate"}),
    ("stages", {"train", "generate"}),
    ("cli", {"cli", "__main__"}),
]
COMMAND = "cli"  # the layer of every command module
DISTRIBUTED_ONLY = ("torch.distributed", "deepspeed", "mpi4py")
PURE = ("core", "diffusion", "models")
PURE_FORBIDDEN = (*DISTRIBUTED_ONLY, "netCDF4", "dask", "xarray")


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_command(module: str) -> bool:
    last = module.rsplit(".", 1)[-1]
    return last in ("cli", "__main__") or last.endswith("_cli")


def _unit(module: str) -> str:
    """The package (or top-level module) under ``hpcdiff`` that ``module`` belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _layer(module: str) -> int | None:
    if _is_command(module):
        return len(LAYERS) - 1
    unit = _unit(module)
    return next((i for i, (_, units) in enumerate(LAYERS) if unit in units), None)


def _imports(path: Path, module: str, known: set[str]):
    """Absolute names imported anywhere in ``path``; ``from pkg import sub`` gives ``pkg.sub``
    when that is a module of the tree, relative imports are resolved against ``module``."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                yield f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base


def _matches(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def violations(root: Path) -> list[str]:
    """Every broken rule in the ``hpcdiff`` package under ``root``, one line each."""
    files = {_module_name(p, root): p for p in sorted((root / "hpcdiff").rglob("*.py"))}
    out = []
    for module, path in files.items():
        where, mine = path.relative_to(root).as_posix(), _layer(module)
        if mine is None:
            out.append(f"{where}: package {_unit(module)!r} has no place in LAYERS")
            continue
        for name in _imports(path, module, set(files)):
            if _matches(name, DISTRIBUTED_ONLY) and _unit(module) != "distributed":
                out.append(f"{where}: imports {name} (only hpcdiff/distributed/ may)")
            if _matches(name, PURE_FORBIDDEN) and _unit(module) in PURE:
                out.append(f"{where}: imports {name} (a pure package)")
            if not name.startswith("hpcdiff"):
                continue
            theirs = _layer(name)
            if theirs is None or _unit(name) == _unit(module) and not _is_command(name):
                continue  # an unknown target is reported at its own file; own package is free
            if theirs > mine or (theirs == mine and not _is_command(module)):
                out.append(
                    f"{where}: imports {name} (layer {LAYERS[theirs][0]}; "
                    f"{module} is in layer {LAYERS[mine][0]})"
                )
    return out


def test_the_tree_follows_every_rule():
    assert violations(ROOT) == []


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in {"hpcdiff/__init__.py": "", **files}.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


BROKEN = {
    "upwards": (
        {
            "hpcdiff/data/reader.py": "from hpcdiff.train.loop import train\n",
            "hpcdiff/train/loop.py": "",
        },
        "hpcdiff/data/reader.py: imports hpcdiff.train.loop (layer stages; "
        "hpcdiff.data.reader is in layer data)",
    ),
    "upwards inside a function": (
        {
            "hpcdiff/config/loader.py": "def f():\n    from hpcdiff.experiment import config\n",
            "hpcdiff/experiment/config.py": "",
        },
        "hpcdiff/config/loader.py: imports hpcdiff.experiment.config (layer experiment; "
        "hpcdiff.config.loader is in layer foundation)",
    ),
    "upwards, relative": (
        {
            "hpcdiff/models/dit.py": "from ..generate import tiled\n",
            "hpcdiff/generate/tiled.py": "",
        },
        "hpcdiff/models/dit.py: imports hpcdiff.generate.tiled (layer stages; "
        "hpcdiff.models.dit is in layer math)",
    ),
    "sibling of the same layer": (
        {
            "hpcdiff/generate/output.py": "def f():\n    import hpcdiff.train.progress\n",
            "hpcdiff/train/progress.py": "",
        },
        "hpcdiff/generate/output.py: imports hpcdiff.train.progress (layer stages; "
        "hpcdiff.generate.output is in layer stages)",
    ),
    "a command module from below": (
        {"hpcdiff/train/loop.py": "from hpcdiff.train import cli\n", "hpcdiff/train/cli.py": ""},
        "hpcdiff/train/loop.py: imports hpcdiff.train.cli (layer cli; "
        "hpcdiff.train.loop is in layer stages)",
    ),
    "a package without a layer": (
        {"hpcdiff/serve/app.py": "import hpcdiff.core\n", "hpcdiff/core/__init__.py": ""},
        "hpcdiff/serve/app.py: package 'serve' has no place in LAYERS",
    ),
    "torch.distributed outside distributed/": (
        {"hpcdiff/train/progress.py": "def rank():\n    import torch.distributed as dist\n"},
        "hpcdiff/train/progress.py: imports torch.distributed (only hpcdiff/distributed/ may)",
    ),
    "deepspeed outside distributed/": (
        {"hpcdiff/nvtx.py": "from deepspeed.accelerator import get_accelerator\n"},
        "hpcdiff/nvtx.py: imports deepspeed.accelerator (only hpcdiff/distributed/ may)",
    ),
    "mpi4py outside distributed/": (
        {"hpcdiff/generate/output.py": "from mpi4py import MPI\n"},
        "hpcdiff/generate/output.py: imports mpi4py (only hpcdiff/distributed/ may)",
    ),
    "I/O library in a pure package": (
        {"hpcdiff/models/io.py": "import netCDF4\n"},
        "hpcdiff/models/io.py: imports netCDF4 (a pure package)",
    ),
}


@pytest.mark.parametrize("files, expected", BROKEN.values(), ids=BROKEN.keys())
def test_a_deliberate_violation_fails(tmp_path, files, expected):
    assert violations(_tree(tmp_path, files)) == [expected]


def test_downward_and_command_imports_pass(tmp_path):
    files = {
        "hpcdiff/train/loop.py": "from hpcdiff.experiment.build import f\nimport hpcdiff.nvtx\n",
        "hpcdiff/experiment/build.py": "from hpcdiff.distributed import engine\n",
        "hpcdiff/distributed/engine.py": "import deepspeed\nimport torch.distributed\n",
        "hpcdiff/data/cli.py": "from hpcdiff.cli import EXIT_OK\nfrom hpcdiff.data import x\n",
        "hpcdiff/cli.py": "import importlib\n",
        "hpcdiff/nvtx.py": "",
    }
    assert violations(_tree(tmp_path, files)) == []


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
