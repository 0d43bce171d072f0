"""``hpcdiff sample``: generate ensembles from a trained run directory."""

from __future__ import annotations

import argparse
import json
import sys

from hpcdiff.config import ConfigError

EXAMPLES = """examples:
  hpcdiff sample runs/quickstart
  hpcdiff sample runs/quickstart sample.ensemble=8 sample.num_steps=32 sample.solver=euler
  # the domain split into 2 x 2 tiles over 4 ranks (same result as 1 rank)
  torchrun --nproc-per-node 4 -m hpcdiff sample runs/quickstart sample.domain_grid=[2,2]
"""


def _run(args: argparse.Namespace) -> int:
    from hpcdiff.generate.sample import generate

    try:
        result = generate(args.run_dir, args.overrides)
    except (ConfigError, FileNotFoundError) as err:
        print(f"hpcdiff sample: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=1))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "sample",
        help="generate ensembles from a trained run",
        description="Sample the run's validation times with its newest checkpoint (EMA "
        "weights) and write samples/samples.nc plus one PNG per variable.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # Positional: torchrun's own parser would take `--run` for its `--run-path`.
    p.add_argument("run_dir", help="run directory written by `hpcdiff train`")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="overrides of the run's config, e.g. sample.ensemble=4",
    )
    p.set_defaults(func=_run)
