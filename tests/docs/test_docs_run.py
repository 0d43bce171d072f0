"""Every shell and Python block of README.md, docs/*.md, configs/README.md and
profiling/README.md runs, in page order, in a scratch directory (tests/docs/docsrun.py says how
pages mark blocks that can only be checked, and how CI scales the commands down)."""

import json
import re
import subprocess
from pathlib import Path

import pytest
from docsrun import (
    ROOT,
    SHELL_LANGUAGES,
    copy_quickstart,
    logical_lines,
    make_scratch,
    page_setup,
    run_page,
    scale_command,
    scaled_config,
    write_physicsnemo_files,
)

PAGES = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    ROOT / "configs" / "README.md",
    ROOT / "profiling" / "README.md",
]
SETUPS = {"quickstart", "physicsnemo"}
COMMAND_WORDS = ("hpcdiff", "torchrun", "make", "python", "srun", "sbatch", "mpirun", "nsys")


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_page_runs(page, tmp_path, request):
    setup = page_setup(page)
    assert set(setup) <= SETUPS, f"{_name(page)}: unknown setup {set(setup) - SETUPS}"
    work = make_scratch(tmp_path / "work")
    if "quickstart" in setup:
        copy_quickstart(request.getfixturevalue("quickstart_state"), work)
    if "physicsnemo" in setup:
        write_physicsnemo_files(work)
    result = run_page(page, work)
    # to the terminal summary (tests/conftest.py), also from a pytest-xdist worker
    request.node.user_properties.append(("docs_counts", (_name(page), result.executed,
                                                         result.checked)))  # fmt: skip


@pytest.mark.slow
def test_quickstart_writes_what_it_promises(quickstart_state):
    """The README's quickstart (`make quickstart` -> scripts/quickstart.sh, steps scaled as the
    docs tests scale them; the state every page starts from, tests/conftest.py): trained,
    consolidated, sampled and evaluated, and the closing message points into the run."""
    run = quickstart_state / "runs" / "quickstart"
    assert (run / "samples" / "samples.nc").stat().st_size > 0
    assert sorted(p.name for p in (run / "samples").glob("*.png")) == [
        "t2m.png",
        "tp.png",
        "u10.png",
        "v10.png",
    ]
    assert json.loads((run / "eval" / "metrics.json").read_text())
    out = (quickstart_state / "make_quickstart.out").read_text()
    assert (run / "model.mdlus").is_file() and f"{run}/" in out


def _fences(text: str):
    """(language, body) of every fenced block of a Markdown text."""
    return re.findall(r"^```([^\n`]*)\n(.*?)^```", text, re.M | re.S)


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_commands_are_in_tagged_blocks(page):
    """An untagged block would be skipped: commands must be in bash/python blocks."""
    for language, body in _fences(page.read_text()):
        if language.strip() in (*SHELL_LANGUAGES, "python", "text"):  # run, or output shown
            continue
        for line in body.splitlines():
            word = line.split()[0] if line.split() else ""
            assert word not in COMMAND_WORDS, f"{_name(page)}: untagged command block: {line}"


def test_scaling_divides_every_step_count():
    assert scale_command("x run.steps=600 checkpoint.every_steps=100 step_000000200") == (
        "x run.steps=12 checkpoint.every_steps=2 step_000000004"
    )
    assert scale_command("'profiling.capture_steps=[10, 12]' run.steps=20") == (
        "'profiling.capture_steps=[0, 1]' run.steps=1"
    )
    assert scale_command("run.val_every=0 run.steps=3") == "run.val_every=0 run.steps=1"
    assert scale_command("sample.num_steps=32") == "sample.num_steps=2"  # samplers need 2
    cfg = scaled_config("dit_zero2.yaml", {"run": {"steps": 2000}, "model": {"args": {}}})
    assert cfg["run"]["steps"] == 4 and cfg["model"]["args"]["depth"] == 1
    assert cfg["data"]["batch_size"] == 1


def test_logical_lines_join_continuations_and_drop_comments():
    text = "# c\nhpcdiff train \\\n    --config a.yaml  # note\n\nX=1 make test\n"
    assert logical_lines(text) == [
        ["hpcdiff", "train", "--config", "a.yaml"],
        ["X=1", "make", "test"],
    ]


def test_scratch_has_scaled_configs(tmp_path):
    work = make_scratch(tmp_path / "w")
    text = (work / "configs" / "quickstart.yaml").read_text()
    assert "steps: 6" in text and (work / "launchers" / "torchrun.sh").is_file()
    # make finds the venv built: it would otherwise pip-install into the suite's own venv
    out = subprocess.run(["make", "-n", "quickstart"], cwd=work, capture_output=True, text=True)
    assert out.returncode == 0 and "pip" not in out.stdout and "quickstart.sh" in out.stdout
