"""Docs as tests: run every shell and Python block of a Markdown page, in order, in a scratch
directory (Sybil parses the page and evaluates the blocks; this module supplies the shell
evaluator, the page directives and the scaling).

A page's source steers its test with HTML comments (invisible when the page is rendered):

* ``<!-- docs-test: setup quickstart physicsnemo -->`` (once, anywhere): what the scratch
  directory holds before the first block. Always: ``configs/`` (the scaled copies, see
  ``scale.yaml``), links to ``launchers/``, ``profiling/``, ``scripts/``, ``Makefile`` and the
  venv. ``quickstart``: also ``data/quickstart`` and ``runs/quickstart`` as ``make quickstart``
  leaves them (trained on 2 ranks, sampled, evaluated). ``physicsnemo``: a PhysicsNeMo-format
  ``corrdiff_diffusion.mdlus`` (SongUNet) and a ``my_project/`` importing
  ``physicsnemo.diffusion``.
* ``<!-- docs-test: check REASON -->`` before a block: the block cannot run here (GPUs, several
  nodes, a queue, or another test runs it); it is checked instead: ``bash -n``, every hpcdiff
  command line parsed by hpcdiff's own parser, ``train`` configs loaded with their overrides
  (``hpcdiff config check``), ``sample`` overrides applied to the run's config, ``make`` targets
  resolved with ``make -n``. Python blocks are compiled.
* ``<!-- docs-test: replace OLD NEW [OLD NEW ...] -->`` before a block: placeholders in the
  block (``/path/to/files/*.nc``, ``my.yaml``) stand for these files of the scratch directory.

Scaling (the one mechanism, ``scale.yaml``): the config copies and every step count on a
command line are divided by ``step_divisor``, and the copies train on one sample and patch per
rank. A reader sees the real commands; CI runs the same text on the scaled configs.
"""

from __future__ import annotations

import fnmatch
import io
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from sybil import Document
from sybil.parsers.markdown import CodeBlockParser, PythonCodeBlockParser
from sybil.parsers.markdown.lexers import DirectiveInHTMLCommentLexer

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SCALE = yaml.safe_load((Path(__file__).with_name("scale.yaml")).read_text())
SHELL_LANGUAGES = ("bash", "sh", "shell")
LINKED = ("launchers", "profiling", "scripts", "Makefile", "requirements", "setup.py")
COUNTS: dict[str, tuple[int, int]] = {}  # page -> (blocks executed, blocks checked only)
STEP_KEYS = (
    "run.steps",
    "checkpoint.every_steps",
    "run.val_every",
    "optim.warmup_steps",
    "sample.num_steps",
)


def step_divisor() -> int:
    return int(os.environ.get("HPCDIFF_DOCS_STEP_DIVISOR", SCALE["step_divisor"]))


LOWEST = {"sample.num_steps": 2}  # the samplers' time grids need two points


def scale_steps(n: int, divisor: int | None = None, lowest: int = 1) -> int:
    """A step count divided by the divisor, rounded, at least ``lowest`` (0 stays 0: 'off')."""
    divisor = divisor or step_divisor()
    return 0 if n == 0 else max(lowest, round(n / divisor))


def scale_window(window: list[int], divisor: int | None = None) -> list[int]:
    """``profiling.capture_steps`` [start, stop) scaled, still at least one step wide."""
    divisor = divisor or step_divisor()
    start = window[0] // divisor
    return [start, max(start + 1, math.ceil(window[1] / divisor))]


def scale_command(text: str) -> str:
    """Step counts in KEY=VALUE overrides and checkpoint directory names of a shell block."""
    keys = "|".join(re.escape(k) for k in STEP_KEYS)
    text = re.sub(
        rf"\b({keys})=(\d+)",
        lambda m: f"{m[1]}={scale_steps(int(m[2]), lowest=LOWEST.get(m[1], 1))}",
        text,
    )
    text = re.sub(
        r"\bprofiling\.capture_steps=\[(\d+), *(\d+)\]",
        lambda m: "profiling.capture_steps=[{}, {}]".format(*scale_window([int(m[1]), int(m[2])])),
        text,
    )
    return re.sub(r"\bstep_(\d{9})\b", lambda m: f"step_{scale_steps(int(m[1])):09d}", text)


def _set(tree: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[leaf] = value


def _get(tree: dict, dotted: str):
    for key in dotted.split("."):
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def scaled_config(name: str, cfg: dict) -> dict:
    """A config of ``configs/`` as CI runs it (see scale.yaml)."""
    for key in STEP_KEYS:
        value = _get(cfg, key)
        if isinstance(value, int):
            _set(cfg, key, scale_steps(value, lowest=LOWEST.get(key, 1)))
    window = _get(cfg, "profiling.capture_steps")
    if window:
        _set(cfg, "profiling.capture_steps", scale_window(window))
    for key, value in SCALE["every_config"].items():
        _set(cfg, key, value)
    for pattern, overrides in SCALE["per_config"].items():
        if fnmatch.fnmatch(name, pattern):
            for key, value in overrides.items():
                _set(cfg, key, value)
    return cfg


def make_scratch(work: Path) -> Path:
    """The scratch layout every page starts from (see the module docstring)."""
    work.mkdir(parents=True, exist_ok=True)
    for name in LINKED:
        if not (work / name).exists():
            (work / name).symlink_to(ROOT / name)
    _venv_view(work / ".venv")
    (work / "configs").mkdir(exist_ok=True)
    for path in sorted((ROOT / "configs").iterdir()):
        if path.suffix == ".yaml":
            cfg = scaled_config(path.name, yaml.safe_load(path.read_text()))
            text = f"# scaled copy of configs/{path.name} (tests/docs/scale.yaml)\n"
            (work / "configs" / path.name).write_text(text + yaml.safe_dump(cfg, sort_keys=False))
        else:
            (work / "configs" / path.name).write_bytes(path.read_bytes())
    return work


def _venv_view(venv: Path) -> None:
    """``.venv`` for the Makefile: links to every entry of the suite's own venv plus a fresh
    ``.installed`` stamp, so ``make quickstart`` finds the venv built and never runs pip (which
    would install into the shared venv)."""
    venv.mkdir(exist_ok=True)
    for entry in BIN.parent.iterdir():
        if entry.name != ".installed" and not (venv / entry.name).exists():
            (venv / entry.name).symlink_to(entry)
    (venv / ".installed").touch()


def shell_env(work: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(ROOT),
        OMP_NUM_THREADS="1",
        HOME=env.get("HOME", str(work)),
    )
    return env


@dataclass
class Page:
    """The state of one page's run: scratch directory, pending directives, counts."""

    path: Path
    work: Path
    executed: int = 0
    checked: int = 0
    pending_check: str | None = None
    pending_replace: list[tuple[str, str]] = field(default_factory=list)
    log: list[str] = field(default_factory=list)

    def take(self) -> tuple[str | None, list[tuple[str, str]]]:
        check, replace = self.pending_check, self.pending_replace
        self.pending_check, self.pending_replace = None, []
        return check, replace

    def where(self, example) -> str:
        return f"{self.path.relative_to(ROOT)}, line {example.line}"


def page_setup(path: Path) -> list[str]:
    """The names of ``<!-- docs-test: setup ... -->`` of a page."""
    found = re.findall(r"<!--\s*docs-test:\s*setup\s+([^>]*?)\s*-->", path.read_text())
    return [name for group in found for name in group.split()]


def _directive(example) -> None:
    page: Page = example.namespace["__page__"]
    kind, _, text = example.parsed.partition(" ")
    rest = shlex.split(text) if kind == "replace" else text.split()
    if kind == "check":
        page.pending_check = text.strip() or "cannot run here"
    elif kind == "replace":
        if not rest or len(rest) % 2:
            raise AssertionError(f"{page.where(example)}: 'replace' needs OLD NEW pairs")
        page.pending_replace = list(zip(rest[::2], rest[1::2]))
    elif kind != "setup":
        raise AssertionError(f"{page.where(example)}: unknown docs-test directive {kind!r}")


class DirectiveParser:
    """``<!-- docs-test: ... -->`` comments, evaluated in page order with the blocks."""

    def __init__(self) -> None:
        self.lexer = DirectiveInHTMLCommentLexer("docs-test", arguments=r"(?:(?!-->)[^\n])*?")

    def __call__(self, document):
        for region in self.lexer(document):
            region.parsed = region.lexemes["arguments"].strip()
            region.evaluator = _directive
            yield region


def _replace(text: str, pairs: list[tuple[str, str]]) -> str:
    for old, new in pairs:
        if old not in text:
            raise AssertionError(f"docs-test replace: {old!r} is not in the block")
        text = text.replace(old, new)
    return text


def run_shell(example) -> None:
    page: Page = example.namespace["__page__"]
    check, replace = page.take()
    text = scale_command(_replace(str(example.parsed), replace))
    if check is not None:
        check_shell(page, example, text)
        page.checked += 1
        return
    t0 = time.perf_counter()
    out = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", text], cwd=page.work, env=shell_env(page.work),
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    page.log.append(f"[{time.perf_counter() - t0:.1f} s] $ {text}\n{out.stdout}{out.stderr}")
    if out.returncode != 0:
        raise AssertionError(
            f"{page.where(example)}: block exited {out.returncode}:\n{text}\n--- stdout\n"
            f"{out.stdout[-4000:]}\n--- stderr\n{out.stderr[-4000:]}"
        )
    page.executed += 1


def logical_lines(text: str) -> list[list[str]]:
    """Commands of a shell block: continuations joined, comments and blank lines dropped."""
    out = []
    for line in text.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words:
            out.append(words)
    return out


def hpcdiff_args(words: list[str]) -> list[str] | None:
    """The hpcdiff arguments of a command line (hpcdiff, python -m hpcdiff, torchrun -m
    hpcdiff, a launcher script, nsys_profile.sh ... --), else None."""
    for i, word in enumerate(words):
        if Path(word).name == "hpcdiff" and (i == 0 or words[i - 1] != "-m"):
            return words[i + 1 :]
        if word == "-m" and i + 1 < len(words) and words[i + 1] == "hpcdiff":
            return words[i + 2 :]
        if fnmatch.fnmatch(word, "*launchers/*.sh"):
            return words[i + 1 :]
        if word.endswith("nsys_profile.sh") and "--" in words[i:]:
            return words[words.index("--", i) + 1 :]
    return None


def check_shell(page: Page, example, text: str) -> None:
    """A block that cannot run here: syntax, hpcdiff arguments, configs, make targets."""
    where = page.where(example)
    syntax = subprocess.run(["bash", "-n", "-c", text], capture_output=True, text=True)
    assert syntax.returncode == 0, f"{where}: bash syntax: {syntax.stderr}"
    for words in logical_lines(text):
        args = hpcdiff_args(words)
        if args is not None and "..." not in args:
            check_hpcdiff(page.work, args, where)
        elif words[0] == "make":
            targets = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
            out = subprocess.run(
                ["make", "-n", *targets], cwd=page.work, env=shell_env(page.work),
                capture_output=True, text=True,
            )  # fmt: skip
            assert out.returncode == 0, f"{where}: make -n {targets}: {out.stderr}"
        elif words[0] == "sbatch":
            script = next(w for w in words[1:] if not w.startswith("-") and w.endswith(".sh"))
            assert (page.work / script).is_file(), f"{where}: {script} does not exist"


def check_hpcdiff(work: Path, args: list[str], where: str) -> None:
    """Parse an hpcdiff command line with hpcdiff's parser and load the config it names."""
    from hpcdiff.cli import parse_args
    from hpcdiff.experiment.config import load_config

    try:
        ns = parse_args(list(args))
    except SystemExit as err:
        raise AssertionError(f"{where}: hpcdiff {shlex.join(args)}: not accepted") from err
    cwd = os.getcwd()
    os.chdir(work)
    try:
        if ns.command == "train" or (ns.command == "config" and getattr(ns, "config", None)):
            load_config(ns.config, ns.overrides)
        elif ns.command == "sample":
            load_config(Path(ns.run_dir) / "config.yaml", ns.overrides)
    finally:
        os.chdir(cwd)


class PythonRunner:
    """Sybil's Python evaluator in the page's scratch directory, or a compile in check mode."""

    def __init__(self) -> None:
        self.parser = PythonCodeBlockParser()

    def __call__(self, document):
        for region in self.parser(document):
            inner = region.evaluator
            region.evaluator = self._wrap(inner)
            yield region

    @staticmethod
    def _wrap(inner):
        def evaluate(example):
            page: Page = example.namespace["__page__"]
            check, replace = page.take()
            if replace:
                raise AssertionError(f"{page.where(example)}: replace is for shell blocks")
            if check is not None:
                compile(str(example.parsed), page.where(example), "exec")
                page.checked += 1
                return None
            cwd = os.getcwd()
            os.chdir(page.work)
            try:
                result = inner(example)
            finally:
                os.chdir(cwd)
            page.executed += 1
            return result

        return evaluate


def parse_page(path: Path) -> Document:
    parsers = [
        DirectiveParser(),
        PythonRunner(),
        *(CodeBlockParser(lang, evaluator=run_shell) for lang in SHELL_LANGUAGES),
    ]
    return Document.parse(str(path), *parsers)


def run_page(path: Path, work: Path) -> Page:
    """Evaluate every block and directive of ``path`` in order in ``work``."""
    document = parse_page(path)
    page = Page(path, work)
    document.namespace["__page__"] = page
    for example in document.examples():
        example.evaluate()
    if os.environ.get("HPCDIFF_DOCS_LOG"):  # the blocks' output and times, for debugging
        with open(os.environ["HPCDIFF_DOCS_LOG"], "a") as fh:
            fh.write(f"===== {path}\n" + "\n".join(page.log) + "\n")
    if page.pending_check or page.pending_replace:
        raise AssertionError(f"{path}: a docs-test directive at the end has no block")
    return page


def copy_quickstart(src: Path, work: Path) -> None:
    for name in ("data", "runs"):
        shutil.copytree(src / name, work / name, symlinks=True)


def write_physicsnemo_files(work: Path) -> None:
    """corrdiff_diffusion.mdlus in PhysicsNeMo's layout (a small SongUNet with random weights)
    and my_project/ with code written against physicsnemo.diffusion."""
    import torch

    from hpcdiff.models import SongUNet

    torch.manual_seed(0)
    net = SongUNet(img_resolution=16, in_channels=3, out_channels=2, model_channels=16,
                   channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8])  # fmt: skip
    blob = io.BytesIO()
    torch.save(net.state_dict(), blob)
    spec = {"__name__": "SongUNet", "__module__": "physicsnemo.models.diffusion_unets.song_unet",
            "__args__": net.init_args}  # fmt: skip
    with zipfile.ZipFile(work / "corrdiff_diffusion.mdlus", "w") as zf:
        zf.writestr("args.json", json.dumps(spec))
        zf.writestr("metadata.json", json.dumps({"physicsnemo_version": "2.2.2"}))
        zf.writestr("model.pt", blob.getvalue())
    (work / "my_project").mkdir()
    (work / "my_project" / "sample.py").write_text(
        "from physicsnemo.diffusion.samplers import sample\n"
        "from physicsnemo.diffusion.noise_schedulers import EDMNoiseScheduler\n"
    )
