"""The ``hpcdiff`` command line: one entry point, one subcommand per component.

Each component module that offers commands exposes ``register(subparsers)``, which adds its
parser(s) and sets ``func`` (called with the parsed namespace, returning an exit code).
The exit codes of every subcommand (documented in ``docs/cli.md``):

* ``EXIT_OK`` (0): success;
* ``EXIT_FAILURE`` (1): the work failed while running (an uncaught exception prints its
  traceback), a checkpoint is corrupt, NVTX ranges do not reach the profiler;
* ``EXIT_USAGE`` (2): bad usage or invalid input, reported before any work: unknown option,
  :class:`~hpcdiff.config.ConfigError` (config key, type or combination),
  :class:`~hpcdiff.data.errors.DataError` (input files), a missing path or checkpoint,
  ``CheckpointError`` (a checkpoint this run cannot use), a package the command needs that is
  not installed (one line naming the extra to install);
* ``EXIT_IO`` (4): a checkpoint could not be written (disk full, permission denied): its
  temporary files were removed, the previous checkpoint is intact; the traceback is in the
  rank's log file, the console gets one line;
* ``EXIT_STOPPED`` (75, ``EX_TEMPFAIL`` of sysexits.h): ``hpcdiff train`` stopped on one of
  ``run.stop_signals`` after writing a checkpoint; rerunning the command (or the requeued
  Slurm job) continues from it.

``hpcdiff --help`` and every subcommand's ``--help`` work whatever is installed: a command
module that cannot be imported is listed with what to install instead.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import Any

import hpcdiff
from hpcdiff import nvtx
from hpcdiff.extras import install_hint

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_IO = 4
EXIT_STOPPED = 75

# Modules offering subcommands (and the command each adds); imported when the parser is built.
_COMMAND_MODULES = {
    "hpcdiff.train.cli": "train",
    "hpcdiff.generate.cli": "sample",
    "hpcdiff.evaluate.cli": "evaluate",
    "hpcdiff.train.checkpoint_cli": "checkpoint",
    "hpcdiff.train.profile_cli": "profile",
    "hpcdiff.data.cli": "data",
    "hpcdiff.models.cli": "models",
    "hpcdiff.experiment.cli": "config",
}


def print_error(command: str, message: object) -> None:
    """The one error format of every command: ``hpcdiff COMMAND: error: MESSAGE`` on stderr."""
    print(f"hpcdiff {command}: error: {message}", file=sys.stderr, flush=True)


EPILOG = """examples:
  hpcdiff data synth --out data/quickstart --shape 128 128 --times 48 --files 2
  hpcdiff train --config configs/quickstart.yaml --dry-run
  torchrun --nproc-per-node 2 -m hpcdiff train --config configs/quickstart.yaml run.steps=50
  hpcdiff sample runs/quickstart sample.ensemble=4
  hpcdiff train --help            # the options and examples of one command

config overrides: trailing KEY=VALUE arguments set dotted config keys, values parsed as YAML
  (optim.lr=1e-4 'sample.domain_grid=[2, 2]' ema.decay=null); see docs/configs.md.

exit codes: 0 success, 1 failure while running, 2 bad usage, config or input, 4 a checkpoint
  could not be written, 75 stopped by a signal after a checkpoint (docs/cli.md).
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
    for name, command in _COMMAND_MODULES.items():
        try:
            importlib.import_module(name).register(sub)
        except ModuleNotFoundError as err:
            if err.name and name.startswith(err.name):  # component not in this build
                continue
            if not err.name or err.name.split(".")[0] == "hpcdiff":
                raise
            _register_unavailable(sub, command, install_hint(err.name))
    return parser


def _register_unavailable(sub: Any, command: str, hint: str) -> None:
    """``command`` whose module needs a package that is not installed: listed, its help and
    any call say what to install (a call exits 2)."""

    # Drop what ``register`` added before it failed (argparse has no public removal).
    sub._name_parser_map.pop(command, None)
    sub._choices_actions = [a for a in sub._choices_actions if a.dest != command]

    def explain(args: argparse.Namespace) -> int:
        print(f"hpcdiff {command}: error: unavailable, needs {hint}", file=sys.stderr)
        return EXIT_USAGE

    p = sub.add_parser(command, help=f"(unavailable: needs {hint})",
                       description=f"Unavailable: needs {hint}")  # fmt: skip
    p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    p.set_defaults(func=explain, overrides=[])


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
    nvtx.configure()  # HPCDIFF_NVTX=1 switches profiler ranges on for any command
    parser = build_parser()
    args = parse_args(argv, parser)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args) or EXIT_OK)
    except ModuleNotFoundError as err:  # a package the command needs: say what to install
        if not err.name or err.name.split(".")[0] == "hpcdiff":
            raise
        print_error(args.command, _missing(err))
        return EXIT_USAGE
    except Exception as err:
        code = _exit_code(err)
        if code is None:
            raise
        # The traceback goes to this rank's log file (when the command has one), never to
        # the console; a checkpoint write failure is the same on every rank: rank 0 says it.
        logger = logging.getLogger("hpcdiff")
        if logger.handlers:  # set up by the command: a file per rank
            logger.error("%s", err, exc_info=err, extra={"console": False})
        if code != EXIT_IO or os.environ.get("RANK", "0") == "0":
            print_error(args.command, err)
        return code


def _exit_code(err: Exception) -> int | None:
    """The documented exit code of an expected error, None for anything else."""
    from hpcdiff.config import ConfigError
    from hpcdiff.data.errors import DataError

    if isinstance(err, (ConfigError, DataError)):
        return EXIT_USAGE
    checkpoint = sys.modules.get("hpcdiff.distributed.checkpoint")  # loaded if it raised
    if checkpoint is not None:
        if isinstance(err, checkpoint.CheckpointError):
            return EXIT_USAGE
        if isinstance(err, checkpoint.CheckpointWriteError):
            return EXIT_IO
    return None


def _missing(err: ModuleNotFoundError) -> str:
    from hpcdiff.extras import MissingDependency

    if isinstance(err, MissingDependency):
        return str(err)
    return f"needs {install_hint(err.name or '')}"


if __name__ == "__main__":
    sys.exit(main())
