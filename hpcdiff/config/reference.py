"""The config reference (``docs/configs.md``), generated from the section dataclasses.

Every dataclass-typed field of a root config (the experiment's is
:class:`hpcdiff.experiment.config.TrainConfig`) is a section, walked recursively; each other
field is a row: dotted key, type (``Literal`` choices spelled out), default and meaning. The
meaning is the field's comment in the source: a trailing ``# comment`` on the field's line(s),
else the comment lines directly above it, so documenting a new key is writing its comment.
``hpcdiff config reference -o docs/configs.md`` rewrites the file; ``--check`` fails when it
is stale, which a test does.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import re
import sys
import textwrap
import tokenize
import typing
from pathlib import Path
from typing import Any

from hpcdiff.config.loader import type_name

_TOOL_COMMENTS = ("fmt:", "noqa", "type:", "pragma")

HEADER = """\
# Config reference

<!-- Generated from the config dataclasses by `hpcdiff config reference -o docs/configs.md`;
do not edit by hand: change the field's comment in the source and regenerate. -->

An experiment is one YAML file with one section per component (see `configs/` for complete
examples). Every key has a default; `data.files` and `data.variables` must be set. Any key
can be overridden on the command line as `section.key=value`, the value parsed as YAML:

<!-- docs-test: setup quickstart -->
```bash
hpcdiff train --config configs/quickstart.yaml --dry-run optim.lr=1e-4 'sample.window=cosine'
hpcdiff config check --config configs/quickstart.yaml zero.stage=3   # validate, print resolved
```

Unknown keys, wrong types and impossible combinations are rejected before any work starts,
with a message naming the dotted key and what is allowed (exit code 2). `hpcdiff train`
writes the resolved config, defaults included, to `<run.out_dir>/<run.name>/config.yaml`;
`hpcdiff sample` reads it back.
"""


def _comments(source: str) -> dict[int, tuple[str, bool]]:
    """Line number -> (comment text, whether the comment is alone on its line)."""
    out = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type != tokenize.COMMENT:
            continue
        text = tok.string.lstrip("#").strip()
        if text and not text.startswith(_TOOL_COMMENTS):
            out[tok.start[0]] = (text, tok.line.strip().startswith("#"))
    return out


def field_comments(cls: type) -> dict[str, str]:
    """The comment documenting each field of dataclass ``cls`` (and its dataclass bases)."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):  # defined interactively: no source to read
            continue
        comments = _comments(source)
        for node in typing.cast(ast.ClassDef, ast.parse(source).body[0]).body:
            if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
                continue
            lines = range(node.lineno, node.end_lineno + 1)
            text = [comments[n][0] for n in lines if n in comments]
            above = node.lineno - 1
            while not text and above in comments and comments[above][1]:
                above -= 1
            if not text:
                text = [comments[n][0] for n in range(above + 1, node.lineno)]
            if text:
                out[node.target.id] = " ".join(text)
    return out


def format_value(value: Any) -> str:
    """A default as it would be written in YAML flow style.

    >>> format_value((0.9, 0.999)), format_value(None), format_value({}), format_value(True)
    ('[0.9, 0.999]', 'null', '{}', 'true')
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value else '""'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {format_value(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return f"`{format_value(f.default)}`"
    if f.default_factory is not dataclasses.MISSING:
        return f"`{format_value(f.default_factory())}`"
    return "required"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown(rst: str) -> str:
    """Inline reST of a docstring as Markdown.

    >>> markdown("see :mod:`hpcdiff.nvtx` and ``x: 1``")
    'see `hpcdiff.nvtx` and `x: 1`'
    """
    return re.sub(r":[a-z]+:`~?([^`]+)`", r"`\1`", rst).replace("``", "`")


def _summary(cls: type) -> str:
    """First paragraph of the class docstring, without a leading "Section ``x``:"."""
    doc = inspect.getdoc(cls) or ""
    if doc.startswith(f"{cls.__name__}("):  # dataclass's generated signature: no docstring
        return ""
    first = " ".join(doc.split("\n\n")[0].split())
    head, sep, rest = first.partition(": ")
    text = rest if sep and head.startswith("Section ") else first
    return markdown(text[:1].upper() + text[1:])


def _sections(cls: type, prefix: str, level: int, lines: list[str]) -> None:
    """Append the table of ``cls``'s plain fields, then one subsection per nested section."""
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    comments = field_comments(cls)
    plain = [f for f in fields if not dataclasses.is_dataclass(hints[f.name])]
    if plain:
        lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
        for f in plain:
            key = f"{prefix}.{f.name}" if prefix else f.name
            row = [f"`{key}`", f"`{type_name(hints[f.name])}`", _default(f)]
            meaning = markdown(comments.get(f.name, ""))
            lines.append("| " + " | ".join(_cell(c) for c in [*row, meaning]) + " |")
        lines.append("")
    for f in fields:
        sub = hints[f.name]
        if not dataclasses.is_dataclass(sub):
            continue
        key = f"{prefix}.{f.name}" if prefix else f.name
        lines += [f"{'#' * level} `{key}`", ""]
        where = f"`{sub.__module__}.{sub.__qualname__}`"
        summary = _summary(sub)
        lines += [f"{summary} ({where})" if summary else where, ""]
        _sections(sub, key, level + 1, lines)


def render(root: type) -> str:
    """The Markdown reference of the root config dataclass ``root``."""
    hints = typing.get_type_hints(root)
    names = [f.name for f in dataclasses.fields(root) if dataclasses.is_dataclass(hints[f.name])]
    lines = [HEADER, "Sections: " + ", ".join(f"[`{n}`](#{n})" for n in names) + ".", ""]
    _sections(root, "", 2, lines)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str], root: type) -> int:
    """Write (``-o``) or check (``--check``) the reference of ``root``; print it without
    either."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv), root)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", help="write the reference to this file")
    parser.add_argument(
        "--check", metavar="FILE", help="exit 1 if FILE differs from the generated reference"
    )


def run(args: argparse.Namespace, root: type) -> int:
    """``-o``/``--check``/print the reference of ``root``, as parsed by :func:`add_arguments`."""
    text = render(root)
    if args.check:
        path = Path(args.check)
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            print(
                f"{path} is out of date: regenerate it with `hpcdiff config reference -o {path}`",
                file=sys.stderr,
            )
            return 1
        print(f"{path} is up to date")
        return 0
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.output}")
    else:
        sys.stdout.write(text)
    return 0
