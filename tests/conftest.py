"""Settings, fixtures and hooks shared by the whole suite.

`make test` runs the suite on two pytest-xdist workers, a test file at a time per worker
(``-n 2 --dist loadfile``: module fixtures are built once; the multi-node tests share one
session fixture and one file): the serial suite kept one of the two cores idle about half of
the time (single-rank runs, launcher and Slurm waits, timeouts). Slurm jobs of the two workers
queue on the one-node Slurm as any jobs do. (``loadgroup`` would group across files, but
pytest-xdist 3.8's groups do not reach pytest 9's node ids.)"""

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

sys.path.insert(0, str(Path(__file__).resolve().parent / "docs"))  # `docsrun`
from docsrun import COUNTS, make_scratch, shell_env

# Property-based tests run a fixed, derandomized budget: the same examples on every run and
# machine (no example database), so CI time is bounded and a failure reproduces.
settings.register_profile(
    "hpcdiff",
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.load_profile("hpcdiff")


@pytest.fixture(scope="session")
def quickstart_state(tmp_path_factory):
    """A scratch directory after `make quickstart` (the README's first command), run once for
    the suite with the step counts of tests/docs/scale.yaml: data/quickstart and a trained,
    sampled and evaluated runs/quickstart; what make printed is in make_quickstart.out. The docs
    pages start from it and tests/train checks what the script promises."""
    work = make_scratch(tmp_path_factory.mktemp("docs") / "quickstart")
    out = subprocess.run(
        ["make", "quickstart"], cwd=work, env=shell_env(work),
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert out.returncode == 0, f"quickstart failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    (work / "make_quickstart.out").write_text(out.stdout)
    return work


def pytest_runtest_logreport(report):
    """The docs pages' block counts (tests/docs), sent by whichever process ran the page."""
    for key, value in report.user_properties:
        if key == "docs_counts" and report.when == "call":
            page, executed, checked = value
            COUNTS[page] = (executed, checked)


def pytest_terminal_summary(terminalreporter):
    if not COUNTS:
        return
    terminalreporter.section("docs as tests: blocks executed / checked only, per page")
    for page, (executed, checked) in sorted(COUNTS.items()):
        terminalreporter.write_line(f"{page:<32} {executed:>3} executed {checked:>3} checked only")
    executed = sum(e for e, _ in COUNTS.values())
    checked = sum(c for _, c in COUNTS.values())
    terminalreporter.write_line(f"{'total':<32} {executed:>3} executed {checked:>3} checked only")
