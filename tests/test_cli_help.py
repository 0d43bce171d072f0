"""The ``hpcdiff`` command line: every subcommand's help, every command shown in the help texts
and in docs/ parses (flags and config keys exist), and the documented exit codes."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import torch
import yaml

import hpcdiff
from hpcdiff.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, build_parser, main, parse_args
from hpcdiff.experiment.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]


def _subcommands(parser: argparse.ArgumentParser, path: tuple = ()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from _subcommands(sub, (*path, name))


PARSERS = dict(_subcommands(build_parser()))


def hpcdiff_commands(text: str) -> list[list[str]]:
    """The argument lists after ``hpcdiff`` / ``-m hpcdiff`` / ``launchers/*.sh`` in shell
    lines of ``text`` (continuations joined, comments dropped, ``...`` placeholders skipped)."""
    found = []
    for line in text.replace("\\\n", " ").splitlines():
        if "..." in line:
            continue
        try:
            words = shlex.split(line, comments=True)
        except ValueError:  # not a shell line (unbalanced quotes in prose)
            continue
        starts = [i for i, w in enumerate(words) if w == "hpcdiff" or w.startswith("launchers/")]
        if starts and len(words) > starts[-1] + 1:
            found.append(words[starts[-1] + 1 :])
    return found


def config_key_exists(dotted: str) -> bool:
    """Whether ``a.b.c`` names a TrainConfig field (keys inside dict-typed fields are free)."""
    cls: typing.Any = TrainConfig
    for part in dotted.split("."):
        if not dataclasses.is_dataclass(cls):
            return typing.get_origin(cls) is dict
        hints = typing.get_type_hints(cls)
        if part not in hints:
            return False
        cls = hints[part]
    return True


def check_command(argv: list[str]) -> None:
    """Parse ``argv`` as ``hpcdiff`` would (running nothing); its flags, override keys and
    shipped config files must exist."""
    try:
        args = parse_args(argv)
    except SystemExit as exit_:  # --help / --version examples
        assert exit_.code == 0, f"`hpcdiff {shlex.join(argv)}` does not parse"
        return
    for item in getattr(args, "overrides", None) or []:
        key = item.partition("=")[0]
        assert config_key_exists(key), f"`hpcdiff {shlex.join(argv)}`: no config key {key!r}"
    config = getattr(args, "config", None)
    if config and config.startswith("configs/"):
        assert (ROOT / config).is_file(), f"`hpcdiff {shlex.join(argv)}`: no {config}"


@pytest.mark.parametrize("path", sorted(PARSERS), ids=" ".join)
def test_help_has_a_description_and_examples_that_parse(path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*path, "--help"])
    assert exit_.value.code == EXIT_OK
    out = capsys.readouterr().out
    assert out.startswith(f"usage: hpcdiff {' '.join(path)}")
    parser = PARSERS[path]
    assert parser.description, f"hpcdiff {' '.join(path)} has no description"
    assert "example" in out
    examples = hpcdiff_commands(parser.epilog or "")
    assert any(cmd[: len(path)] == list(path) for cmd in examples), f"no example of {path}"
    for cmd in examples:
        check_command(cmd)


def test_top_level_help_and_python_dash_m(capsys):
    assert main([]) == EXIT_USAGE  # no command: the help, as a usage error
    assert "exit codes" in capsys.readouterr().out
    for cmd in hpcdiff_commands(build_parser().epilog):
        check_command(cmd)
    out = subprocess.run(
        [sys.executable, "-m", "hpcdiff", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"hpcdiff {hpcdiff.__version__}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_command_in_the_docs_parses(doc):
    fences = re.findall(r"^```(\w*)\n(.*?)^```", doc.read_text(), flags=re.S | re.M)
    blocks = [body for lang, body in fences if lang in ("bash", "sh", "console", "")]
    for cmd in hpcdiff_commands("\n".join(blocks)):
        check_command(cmd)


def test_python_examples_in_the_docs_run(tmp_path):
    """Every Python block of docs/ that needs no user file runs (one interpreter, block by
    block, each from its own file so a traceback names the page)."""
    paths = []
    for doc in sorted((ROOT / "docs").glob("*.md")):
        blocks = re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S)
        for i, block in enumerate(blocks):
            if not re.search(r"\.(mdlus|pt)\"", block):  # snippets loading the user's files
                paths.append(tmp_path / f"{doc.stem}_{i}.py")
                paths[-1].write_text(block)
    assert {p.name.rsplit("_", 1)[0] for p in paths} >= {"concepts", "migrating"}
    driver = "import runpy, sys\nfor path in sys.argv[1:]:\n    runpy.run_path(path)\n"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", driver, *map(str, paths)], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]


def test_overrides_may_follow_options():
    args = parse_args(["sample", "runs/x", "a.b=1", "--dry-run", "c.d=2"])
    assert args.overrides == ["a.b=1", "c.d=2"] and args.dry_run
    with pytest.raises(SystemExit) as exit_:
        parse_args(["sample", "runs/x", "--dry-run", "stray"])
    assert exit_.value.code == EXIT_USAGE


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "c.yaml"
    data = {"files": [str(tmp_path / "none_*.nc")], "variables": ["t2m"]}
    path.write_text(yaml.safe_dump({"data": data, "run": {"out_dir": str(tmp_path / "runs")}}))
    return path


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--config", "{cfg}", "optim.lrr=1"], "config key 'optim.lrr' is unknown"),
        (["train", "--config", "{cfg}", "zero.stage=5"], "'zero.stage': 5 is not one of"),
        (["train", "--config", "{tmp}/missing.yaml"], "config file not found"),
        (["data", "stats", "--config", "{cfg}"], "'data.files': '{tmp}/none_*.nc' matches no"),
        (["config", "check", "--config", "{cfg}", "run.steps=ten"], "'run.steps': expected"),
        (["sample", "{tmp}"], "not a run directory"),
        (["data", "inspect", "{tmp}/missing.nc"], "missing.nc: file not found"),
        (["checkpoint", "inspect", "{tmp}/missing"], "no such file or directory"),
    ],
)
def test_bad_input_exits_with_the_usage_code_naming_the_problem(
    argv, message, config, tmp_path, capsys
):
    fill = {"cfg": str(config), "tmp": str(tmp_path)}
    assert main([a.format(**fill) for a in argv]) == EXIT_USAGE
    assert message.format(**fill) in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # rejected before any work


def test_usage_errors_and_runtime_failures(config, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--config", str(config), "--bogus"])
    assert exit_.value.code == EXIT_USAGE
    assert main(["config", "check", "--config", str(config), "zero.stage=3"]) == EXIT_OK
    assert yaml.safe_load(capsys.readouterr().out)["zero"]["stage"] == 3
    (tmp_path / "file").write_text("")
    out = str(tmp_path / "file" / "data")  # an OSError while writing: failure, not usage
    argv = ["data", "synth", "--out", out, "--shape", "8", "8", "--times", "2", "--files", "1"]
    assert main(argv) == EXIT_FAILURE
    assert "Not a directory" in capsys.readouterr().err


def test_exit_codes_are_documented():
    text = (ROOT / "docs" / "cli.md").read_text()
    for code in (EXIT_OK, EXIT_FAILURE, EXIT_USAGE):
        assert re.search(rf"^\| {code} \|", text, flags=re.M), (
            f"exit code {code} is not in the table"
        )


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run directory as `hpcdiff train` leaves it, minus the weights: config.yaml, a 16 x 16
    synthetic dataset and one (empty, verifiable) checkpoint."""
    from hpcdiff.config import write_yaml
    from hpcdiff.distributed.checkpoint import FORMAT
    from hpcdiff.experiment.config import load_config

    work = tmp_path_factory.mktemp("sample_plan")
    argv = ["data", "synth", "--out", str(work / "data"), "--shape", "16", "16"]
    assert main([*argv, "--times", "4", "--files", "1", "--no-stats"]) == EXIT_OK
    data = yaml.safe_load((work / "data" / "data.yaml").read_text())["data"]
    data.update(stats_file=None, patch_shape=[8, 8], valid_time=None)
    (work / "c.yaml").write_text(yaml.safe_dump({"data": data}))
    run = work / "runs" / "tiny"
    (run / "checkpoints" / "step_000000002").mkdir(parents=True)
    cfg = load_config(work / "c.yaml", ["sample.overlap_pix=2", "sample.times=2"])
    write_yaml(cfg, run / "config.yaml")
    manifest = {"format": FORMAT, "step": 2, "files": {}}
    (run / "checkpoints" / "step_000000002" / "manifest.json").write_text(json.dumps(manifest))
    return run


def test_sample_dry_run_prints_the_plan_and_writes_nothing(run_dir, capsys):
    assert main(["sample", str(run_dir), "--dry-run", "sample.ensemble=3"]) == EXIT_OK
    plan = json.loads(capsys.readouterr().out)
    assert plan["checkpoint"]["step"] == 2 and plan["checkpoint"]["verified"]
    assert plan["grid"] == [16, 16] and plan["ensemble"] == 3 and len(plan["times"]) == 2
    assert plan["patch_grid"] == [3, 3]  # ceil(16 / (8 - overlap 2))
    assert plan["world"] == 1 and plan["output"] == str(run_dir / "samples" / "samples.nc")
    assert plan["solver"] == "dpmpp_2m" and plan["num_steps"] == 18  # the defaults
    assert plan["precision"] == "fp32" and plan["compile"] is False
    assert not (run_dir / "samples").exists()


@pytest.mark.parametrize(
    "override, message",
    [
        ("sample.domain_grid=[2, 2]", "does not divide the world size 1; allowed: py * px in [1]"),
        ("data.patch_shape=[8, 32]", "'data.patch_shape': [8, 32] is larger than the data grid"),
        ("checkpoint.dir=none", "no checkpoint"),
        pytest.param(
            "sample.precision=fp16",
            "'sample.precision': fp16 autocast needs a CUDA device",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 runs on CUDA"),
        ),
    ],
)
def test_sample_rejects_impossible_plans_before_loading_a_model(run_dir, override, message, capsys):
    assert main(["sample", str(run_dir), override]) == EXIT_USAGE
    assert message in capsys.readouterr().err
    assert not (run_dir / "samples").exists()
