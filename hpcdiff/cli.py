"""The ``hpcdiff`` command line: one entry point, one subcommand per component.

Each component module that offers commands exposes ``register(subparsers)``, which adds its
parser(s) and sets ``func`` (called with the parsed namespace, returning an exit code).
The exit codes of every subcommand (documented in ``docs/cli.md``):

* ``EXIT_OK`` (0): success;
* ``EXIT_FAILURE`` (1): the work failed while running (an uncaught exception prints its
  traceback), a checkpoint is corrupt, NVTX ranges do not reach the profiler;
* ``EXIT_USAGE`` (2): bad usage or invalid input, reported before any work: unknown option,
  :class:`~hpcdiff.config.ConfigError` (config key, type or combination),
  :class:`~hpcdiff.data.errors.DataError` (input files), a missing path or checkpoint;
* ``EXIT_STOPPED`` (75, ``EX_TEMPFAIL`` of sysexits.h): ``hpcdiff train`` stopped on one of
  ``run.stop_signals`` after writing a checkpoint; rerunning the command (or the requeued
  Slurm job) continues from it.
"""

from __future__ import annotations

import argparse
import importlib
import sys

import hpcdiff
from hpcdiff.config import ConfigError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_STOPPED = 75

# Modules offering subcommands; each is imported only when the parser is built.
_COMMAND_MODULES = (
    "hpcdiff.train.cli",
    "hpcdiff.generate.cli",
    "hpcdiff.evaluate.cli",
    "hpcdiff.train.checkpoint_cli",
    "hpcdiff.train.profile_cli",
    "hpcdiff.data.cli",
    "hpcdiff.models.cli",
    "hpcdiff.config.cli",
)

EPILOG = """examples:
  hpcdiff data synth --out data/quickstart --shape 128 128 --times 48 --files 2
  hpcdiff train --config configs/quickstart.yaml --dry-run
  torchrun --nproc-per-node 2 -m hpcdiff train --config configs/quickstart.yaml run.steps=50
  hpcdiff sample runs/quickstart sample.ensemble=4
  hpcdiff train --help            # the options and examples of one command

config overrides: trailing KEY=VALUE arguments set dotted config keys, values parsed as YAML
  (optim.lr=1e-4 'sample.domain_grid=[2, 2]' ema.decay=null); see docs/configs.md.

exit codes: 0 success, 1 failure while running, 2 bad usage, config or input, 75 stopped by a
  signal after a checkpoint (docs/cli.md).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hpcdiff",
        description="Distributed diffusion models on large scientific grids: train, sample, "
        "evaluate, prepare NetCDF data, manage checkpoints.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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


def parse_args(
    argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None
) -> argparse.Namespace:
    """Parse a command line; KEY=VALUE overrides may also follow an option (``--dry-run
    a.b=1``), which argparse leaves unparsed once the positionals were matched."""
    parser = parser or build_parser()
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; returns its exit code (argparse exits 2 itself on bad usage)."""
    from hpcdiff.distributed.preempt import catch_early

    catch_early(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parse_args(argv, parser)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args) or EXIT_OK)
    except ValueError as err:  # ConfigError and DataError are ValueErrors: bad input
        from hpcdiff.data.errors import DataError

        if not isinstance(err, (ConfigError, DataError)):
            raise
        print(f"hpcdiff {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
