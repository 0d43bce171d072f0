"""Settings and fixtures shared by the whole suite."""

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

sys.path.insert(0, str(Path(__file__).resolve().parent / "docs"))  # `docsrun`
from docsrun import make_scratch, shell_env

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
