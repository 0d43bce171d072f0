"""``hpcdiff config check|reference``: validate an experiment config, print the key reference."""

from __future__ import annotations

import argparse
import sys

EXAMPLES = """examples:
  # validate a config with overrides and print it resolved (defaults filled in); no data read
  hpcdiff config check --config configs/quickstart.yaml zero.stage=3 run.steps=50
  # regenerate the key reference from the config dataclasses, or check that it is current
  hpcdiff config reference -o docs/configs.md
  hpcdiff config reference --check docs/configs.md
"""


def _check(args: argparse.Namespace) -> int:
    import yaml

    from hpcdiff.config import to_dict
    from hpcdiff.experiment.config import load_config

    cfg = load_config(args.config, args.overrides)  # ConfigError: exit 2 (hpcdiff.cli.main)
    print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
    print(f"{args.config}: valid", file=sys.stderr)
    return 0


def _reference(args: argparse.Namespace) -> int:
    from hpcdiff.config.reference import run
    from hpcdiff.experiment.config import TrainConfig

    return run(args, TrainConfig)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``hpcdiff config`` with its ``check`` and ``reference`` actions."""
    p = subparsers.add_parser(
        "config",
        help="validate a config; generate the config key reference",
        description="Validate experiment configs without running anything, and generate the "
        "reference of every config key (docs/configs.md) from the section dataclasses.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    c = sub.add_parser(
        "check",
        help="validate a config (+ overrides) and print it resolved",
        description="Load the YAML config, apply the overrides, check every key, type and "
        "combination that the file alone decides, and print the resolved config. Data files "
        "are not opened (`hpcdiff train --dry-run` does that).",
        epilog="example:\n  hpcdiff config check --config configs/dit_zero3.yaml "
        "zero.precision=bf16\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument("--config", required=True, help="experiment YAML (see configs/)")
    c.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    c.set_defaults(func=_check)
    r = sub.add_parser(
        "reference",
        help="print, write (-o) or check (--check) the config key reference",
        description="Generate the Markdown table of every config key (type, default, meaning) "
        "from the config dataclasses and the comments on their fields.",
        epilog="examples:\n  hpcdiff config reference -o docs/configs.md\n"
        "  hpcdiff config reference --check docs/configs.md   # exit 1 when stale\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from hpcdiff.config.reference import add_arguments

    add_arguments(r)
    r.set_defaults(func=_reference)
