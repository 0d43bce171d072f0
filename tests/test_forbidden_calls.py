"""No code execution from data anywhere in the repository: no eval/exec, no pickle, no shell
strings, no unsafe YAML, ``torch.load`` only with ``weights_only=True``.

Python files are checked on their syntax tree (so ``model.eval()``-like methods, strings and
comments do not count); shell scripts by a regex for ``eval``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("hpcdiff", "benchmarks", "profiling", "scripts", "tests", "launchers")
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "shelve", "marshal"}
UNSAFE_YAML = {"load", "load_all", "unsafe_load", "unsafe_load_all", "full_load"}
SHELL_EVAL = re.compile(r"(^|[;&|(]\s*|\s)eval\s")


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _dotted(node: ast.expr) -> str:
    """``a.b.c`` for a chain of attributes on a name, else ''."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return ".".join([node.id, *reversed(parts)]) if isinstance(node, ast.Name) else ""


def _call_problem(call: ast.Call) -> str | None:
    name = _dotted(call.func)
    if name in ("eval", "exec", "builtins.eval", "builtins.exec"):
        return f"{name}()"
    if name in ("os.system", "os.popen"):
        return f"{name}() runs a shell"
    shell = _keyword(call, "shell")
    if shell is not None and not (isinstance(shell, ast.Constant) and shell.value is False):
        return "shell=True (or a shell flag that may be true)"
    if name.startswith("yaml.") and name.split(".", 1)[1] in UNSAFE_YAML:
        return f"{name}() (use yaml.safe_load)"
    if name == "torch.load" and not _is_true(_keyword(call, "weights_only")):
        return "torch.load() without weights_only=True"
    if name in ("np.load", "numpy.load") and _is_true(_keyword(call, "allow_pickle")):
        return f"{name}(allow_pickle=True)"
    return None


def python_problems(source: str) -> list[tuple[int, str]]:
    """(line, what) for every forbidden construct in Python ``source``."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [
                (node.lineno, f"import {a.name}") for a in node.names if a.name in PICKLE_MODULES
            ]
        elif isinstance(node, ast.ImportFrom) and (node.module or "") in PICKLE_MODULES:
            out.append((node.lineno, f"from {node.module} import"))
        elif isinstance(node, ast.Call) and (problem := _call_problem(node)):
            out.append((node.lineno, problem))
    return out


def shell_problems(source: str) -> list[tuple[int, str]]:
    lines = source.splitlines()
    return [
        (i + 1, "eval") for i, line in enumerate(lines) if SHELL_EVAL.search(line.split("#")[0])
    ]


def _scripts() -> list[Path]:
    files = []
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*")):
            if (
                path.is_file()
                and "__pycache__" not in path.parts
                and path.suffix in ("", ".py", ".sh")
            ):
                files.append(path)
    return files


def _problems(path: Path) -> list[tuple[int, str]]:
    text = path.read_text(errors="replace")
    first = text.split("\n", 1)[0]
    if path.suffix == ".py" or (not path.suffix and "python" in first):
        return python_problems(text)
    if path.suffix == ".sh" or (first.startswith("#!") and "sh" in first):
        return shell_problems(text)
    return []


def test_the_repository_has_no_forbidden_calls():
    files = _scripts()
    assert len([f for f in files if f.suffix == ".py"]) > 100
    found = [f"{p.relative_to(ROOT)}:{line}: {what}" for p in files for line, what in _problems(p)]
    assert not found, "\n".join(found)


@pytest.mark.parametrize(
    "source",
    [
        "eval('1')",
        "exec(code)",
        "import pickle",
        "import os, dill",
        "from pickle import loads",
        "subprocess.run(cmd, shell=True)",
        "subprocess.run(cmd, shell=flag)",
        "os.system('ls')",
        "yaml.load(text, Loader=yaml.SafeLoader)",
        "yaml.unsafe_load(text)",
        "torch.load(path)",
        "torch.load(path, weights_only=False)",
        "np.load(path, allow_pickle=True)",
    ],
)
def test_each_forbidden_python_construct_is_found(source):
    assert python_problems(source)


@pytest.mark.parametrize(
    "source",
    [
        "model.eval()",
        "engine.train(False)",
        "torch.compile(model)",
        "yaml.safe_load(text)",
        "torch.load(path, map_location='cpu', weights_only=True)",
        "subprocess.run(cmd, shell=False)",
        "x = 'eval(pickle) shell=True'  # import pickle",
        "np.load(path)",
    ],
)
def test_allowed_python_constructs_pass(source):
    assert python_problems(source) == []


def test_shell_eval_is_found_but_not_the_word():
    assert shell_problems('x=1\neval "$cmd"\nfoo; eval $x')
    assert not shell_problems('# eval is not used\necho "evaluate"\nexec "$PY" "$@"')
