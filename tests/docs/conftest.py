"""Shared set-up of the docs tests: the quickstart state pages start from, the per-page counts."""

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `docsrun`
from docsrun import COUNTS, make_scratch, shell_env


@pytest.fixture(scope="session")
def quickstart_state(tmp_path_factory):
    """A scratch directory after `make quickstart` (the README's and quickstart.md's first
    command, run here once for every page, scaled): data/quickstart and a trained, sampled and
    evaluated runs/quickstart."""
    work = make_scratch(tmp_path_factory.mktemp("docs") / "quickstart")
    out = subprocess.run(
        ["make", "quickstart"], cwd=work, env=shell_env(work),
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert out.returncode == 0, f"quickstart failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return work


def pytest_terminal_summary(terminalreporter):
    if not COUNTS:
        return
    terminalreporter.section("docs as tests: blocks executed / checked only, per page")
    for page, (executed, checked) in sorted(COUNTS.items()):
        terminalreporter.write_line(f"{page:<32} {executed:>3} executed {checked:>3} checked only")
    executed = sum(e for e, _ in COUNTS.values())
    checked = sum(c for _, c in COUNTS.values())
    terminalreporter.write_line(f"{'total':<32} {executed:>3} executed {checked:>3} checked only")
