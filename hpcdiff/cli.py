"""The ``hpcdiff`` command line: one entry point, one subcommand per component.

Each component module that offers commands exposes ``register(subparsers)``, which adds its
parser(s) and sets ``func`` (called with the parsed namespace, returning an exit code).
Exit codes: 0 success, 1 runtime failure, 2 bad usage or invalid input.
"""

from __future__ import annotations

import argparse
import importlib
import sys

import hpcdiff

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

# Modules offering subcommands; each is imported only when the parser is built.
_COMMAND_MODULES = (
    "hpcdiff.train.cli",
    "hpcdiff.generate.cli",
    "hpcdiff.evaluate.cli",
    "hpcdiff.train.checkpoint_cli",
    "hpcdiff.train.profile_cli",
    "hpcdiff.data.cli",
    "hpcdiff.models.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hpcdiff",
        description="Distributed diffusion models on large scientific grids.",
    )
    parser.add_argument("--version", action="version", version=f"hpcdiff {hpcdiff.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name and name.startswith(err.name):  # component not in this build
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
