"""``hpcdiff train``: run an experiment config under any launcher (or none)."""

from __future__ import annotations

import argparse
import sys

from hpcdiff.config import ConfigError

EXAMPLES = """examples:
  # one process
  hpcdiff train --config configs/quickstart.yaml
  # 2 local ranks, ZeRO-2, shorter run
  torchrun --nproc-per-node 2 -m hpcdiff train --config configs/quickstart.yaml \\
      zero.stage=2 run.steps=50
  # print the resolved config, parameter counts and ZeRO memory estimate, then exit
  hpcdiff train --config configs/quickstart.yaml --dry-run
"""


def _run(args: argparse.Namespace) -> int:
    from hpcdiff.train.config import load_config

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"hpcdiff train: {err}", file=sys.stderr)
        return 2
    from hpcdiff.data.errors import DataError
    from hpcdiff.train.loop import train

    try:
        train(cfg, dry_run=args.dry_run)
    except (ConfigError, DataError) as err:  # found once files are opened: bad input, exit 2
        print(f"hpcdiff train: {err}", file=sys.stderr)
        return 2
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a patch-based diffusion model",
        description="Train (or resume) the experiment described by a YAML config.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", required=True, help="experiment YAML (see configs/)")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="build everything, print config, parameter counts, memory; exit",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted config overrides, e.g. optim.lr=1e-4",
    )
    p.set_defaults(func=_run)
