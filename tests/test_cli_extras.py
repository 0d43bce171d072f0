"""Missing packages at the command line: ``hpcdiff --help`` and every subcommand's ``--help``
work whatever is installed, and a command that needs a missing package exits 2 with one line
naming what to install (docs/install.md). Packages are hidden by a fresh interpreter in which
importing them fails, as it does where they are not installed; the slow tests build a bare
install as a new user makes it: a fresh virtual environment, the pinned PyTorch wheel, then
``pip install --no-build-isolation -e .`` with no extra."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ("netCDF4", "cftime", "dask", "deepspeed", "mpi4py", "nvtx", "global_land_mask")

# Calls ``--help`` of the root parser and of every subcommand in one process; prints the
# command paths whose help did not exit 0 with a usage text.
HELP_ALL = """
import argparse, contextlib, io, sys
from hpcdiff.cli import build_parser, main

def walk(parser, path=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name)
                yield from walk(sub, (*path, name))

paths, bad = [()] + list(walk(build_parser())), []
for path in paths:
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            main([*path, "--help"])
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    if code != 0 or "usage:" not in out.getvalue():
        bad.append(" ".join(path))
print(f"{len(paths)} helps, failed: {bad}")
sys.exit(1 if bad else 0)
"""


def run_hidden(hidden: tuple[str, ...], code: str, python: str = sys.executable):
    """Run ``code`` in a fresh interpreter where importing any of ``hidden`` fails."""
    prelude = f"import sys\nfor m in {hidden!r}: sys.modules[m] = None\n"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([python, "-c", prelude + code], capture_output=True, text=True,
                          env=env, timeout=300)  # fmt: skip


def command(args: list[str]) -> str:
    return f"from hpcdiff.cli import main\nsys.exit(main({args!r}))"


def test_every_help_works_without_the_core_packages_or_extras():
    done = run_hidden((*CORE, "matplotlib", "tensorboard"), HELP_ALL)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "failed: []" in done.stdout and "Traceback" not in done.stderr


def test_root_help_lists_an_unimportable_command_with_what_to_install():
    done = run_hidden(CORE, command(["--help"]))
    assert done.returncode == 0, done.stderr
    assert "(unavailable: needs netCDF4, a core dependency" in " ".join(done.stdout.split())


def test_a_command_missing_a_core_package_exits_2_in_one_line(tmp_path):
    done = run_hidden(CORE, command(["data", "synth", "--out", str(tmp_path / "d")]))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "hpcdiff data: error: unavailable, needs netCDF4, a core dependency: reinstall hpcdiff "
        "(pip install hpcdiff)"
    ]
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("no_plots", [False, True])
def test_evaluate_names_the_plots_extra_before_any_work(tmp_path, no_plots):
    samples = tmp_path / "missing.nc"
    args = ["evaluate", "--samples", str(samples), *(["--no-plots"] if no_plots else [])]
    done = run_hidden(("matplotlib",), command(args))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    if no_plots:  # no plots wanted: the next check, the missing file, is what stops it
        assert "matplotlib" not in lines[0] and "missing.nc" in lines[0]
    else:
        assert lines[0] == (
            "hpcdiff evaluate: error: the PNG plots (leave them out with --no-plots) need "
            "matplotlib, from the 'plots' extra: pip install 'hpcdiff[plots]'"
        )


# The tested versions (requirements/) as constraints: pip reuses the local wheels and cache.
PINS = ["-c", str(ROOT / "requirements/torch-cpu.txt"), "-c", str(ROOT / "requirements/test.txt")]


def run(*cmd, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def bare_venv(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("bare")
    src = tmp / "src"  # a copy, so the install writes no egg-info into the checkout
    src.mkdir()
    for name in ("setup.py", "README.md", "pyproject.toml"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "hpcdiff", src / "hpcdiff",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    venv = tmp / "venv"
    for cmd in (
        [sys.executable, "-m", "venv", venv],
        [venv / "bin/pip", "install", "--quiet", "torch==2.13.0", *PINS],
        [venv / "bin/pip", "install", "--quiet", "--no-build-isolation", "-e", src, *PINS],
    ):
        done = run(*cmd)
        assert done.returncode == 0, f"{cmd}: {done.stderr[-3000:]}"
    return venv


@pytest.mark.slow
def test_bare_install_has_the_core_packages_and_no_extra(bare_venv):
    code = ("import importlib.util as u\n"
            "print([m for m in ('netCDF4', 'dask', 'deepspeed', 'mpi4py', 'nvtx', 'matplotlib')"
            " if u.find_spec(m) is None])")  # fmt: skip
    done = run(bare_venv / "bin/python", "-c", code)
    assert done.stdout.strip() == "['matplotlib']", done.stderr


@pytest.mark.slow
def test_every_help_works_in_the_bare_install(bare_venv):
    done = run(bare_venv / "bin/hpcdiff", "--help")
    assert done.returncode == 0 and "evaluate" in done.stdout, done.stderr
    done = run(bare_venv / "bin/python", "-c", HELP_ALL)
    assert done.returncode == 0 and "failed: []" in done.stdout, done.stdout + done.stderr


@pytest.mark.slow
def test_a_command_needing_an_extra_names_it_in_one_line(bare_venv, tmp_path):
    done = run(bare_venv / "bin/hpcdiff", "evaluate", "--samples", tmp_path / "s.nc")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "hpcdiff evaluate: error: the PNG plots (leave them out with --no-plots) need "
        "matplotlib, from the 'plots' extra: pip install 'hpcdiff[plots]'"
    ]
