"""``hpcdiff models``: list the named backbone sizes, convert PhysicsNeMo checkpoints."""

from __future__ import annotations

import argparse

from hpcdiff.cli import EXIT_OK, EXIT_USAGE, print_error

EXAMPLES = """examples:
  # named SongUNet and DiT sizes with their parameter counts for 3-channel 64 x 64 inputs
  hpcdiff models --list
  hpcdiff models --list --resolution 256 --in-channels 12
  # a PhysicsNeMo .mdlus checkpoint (SongUNet, SongUNetPosEmbd, DiT) in hpcdiff's format
  hpcdiff models --convert corrdiff_regression.mdlus net.mdlus
"""


def _list(args: argparse.Namespace) -> int:
    from hpcdiff.models.registry import count_parameters, model_config, model_names

    print(
        f"named backbones for {args.resolution}x{args.resolution} inputs, "
        f"{args.in_channels} channels"
    )
    print(f"{'name':<18} {'family':<9} {'parameters':>14}")
    for name in model_names():
        family, _ = model_config(name)
        n = count_parameters(name, resolution=args.resolution, in_channels=args.in_channels)
        print(f"{name:<18} {family:<9} {n:>14,}")
    return EXIT_OK


def _convert(args: argparse.Namespace) -> int:
    from hpcdiff.models.physicsnemo_import import load_physicsnemo

    src, dst = args.convert
    try:
        model = load_physicsnemo(src)
        model.save(dst)
    except (OSError, ValueError) as err:
        print_error("models", err)
        return EXIT_USAGE
    print(f"{src}: {type(model).__name__} with {model.num_parameters():,} parameters -> {dst}")
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    if args.convert:
        return _convert(args)
    if args.list:
        return _list(args)
    args.parser.print_help()
    return EXIT_USAGE


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``models`` subcommand."""
    p = subparsers.add_parser(
        "models",
        help="list backbone sizes, import PhysicsNeMo checkpoints",
        description="List the named backbone sizes (model.name in a config) with their "
        "parameter counts, or convert a PhysicsNeMo checkpoint to hpcdiff's format.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--list", action="store_true", help="print named sizes and parameter counts")
    p.add_argument("--resolution", type=int, default=64, help="image size for --list (64)")
    p.add_argument("--in-channels", type=int, default=3, help="channels for --list (3)")
    p.add_argument(
        "--convert",
        nargs=2,
        metavar=("SRC", "DST"),
        help="convert a PhysicsNeMo .mdlus checkpoint to an hpcdiff .mdlus checkpoint",
    )
    p.set_defaults(func=_run, parser=p)
