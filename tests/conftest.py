"""Settings, fixtures and hooks shared by the whole suite.

`make test` runs the suite on two pytest-xdist workers (``-n 2 --dist loadgroup``): about half
of the serial suite's wall time had one core idle (single-rank runs, launcher and Slurm waits,
timeouts). The tests of one file stay on one worker (module fixtures are built once), and
:func:`pytest_collection_modifyitems` keeps together what shares a machine-wide resource: the
one-node Slurm and Nsight Systems ("slurm"), the namespace nodes ("cluster") and the
quickstart state ("quickstart")."""

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


# Tests that share a machine-wide resource, by file (and test-name part): one worker each.
SHARED = {
    "slurm": ["tests/distributed/test_dist_launchers.py", "tests/profiling/test_nsys.py",
              "tests/distributed/test_preemption.py"],
    "cluster": ["tests/cluster/"],
    "quickstart": ["tests/docs/test_docs_run.py::test_page_runs",
                   "tests/train/test_train_e2e.py::test_quickstart_script_runs_end_to_end"],
}  # fmt: skip


def _group(nodeid: str) -> str:
    for group, prefixes in SHARED.items():
        if any(nodeid.startswith(p) for p in prefixes):
            return group
    return nodeid.split("::")[0]  # the file: its module fixtures are built once


def pytest_collection_modifyitems(items):
    for item in items:
        item.add_marker(pytest.mark.xdist_group(_group(item.nodeid)))


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
