"""``hpcdiff sample``: generate ensembles from a trained run directory.

Before any model is loaded, :func:`sampling_plan` checks the run's config with the overrides,
the checkpoint, the data and the geometry (patch grid, domain grid against the launcher's
world size); ``--dry-run`` prints that plan and stops.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from hpcdiff.cli import EXIT_OK, EXIT_USAGE

EXAMPLES = """examples:
  hpcdiff sample runs/quickstart
  hpcdiff sample runs/quickstart sample.ensemble=8 sample.num_steps=32 sample.solver=euler
  # check config, checkpoint (checksums), data and geometry; print the plan; sample nothing
  hpcdiff sample runs/quickstart --dry-run sample.ensemble=8
  # the domain split into 2 x 2 tiles over 4 ranks (same result as 1 rank)
  torchrun --nproc-per-node 4 -m hpcdiff sample runs/quickstart 'sample.domain_grid=[2, 2]'

Writes <run>/samples/samples.nc (members and truth, CF metadata, physical units), one PNG per
variable and summary.json. Exit code 2: invalid overrides, data or missing checkpoint.
"""


def _checkpoint(root: Path, verify: bool) -> dict[str, Any]:
    """The checkpoint sampling will load (newest; with ``verify`` the newest that verifies)."""
    from hpcdiff.distributed.checkpoint import find_latest, list_checkpoints, read_manifest

    found = list_checkpoints(root)
    if not found:
        raise FileNotFoundError(f"{root}: no checkpoint (train the run first)")
    path = find_latest(root) if verify else found[0]
    if path is None:
        raise FileNotFoundError(f"{root}: no checkpoint passes verification")
    try:
        step = read_manifest(path)["step"]
    except ValueError as err:
        raise FileNotFoundError(str(err)) from None
    return {"path": str(path), "step": step, "verified": verify}


def sampling_plan(
    run_dir: str | Path, overrides: list[str] = (), verify: bool = False, world: int = 1
) -> dict:
    """What ``hpcdiff sample`` on ``world`` ranks would do, after checking everything it can
    without a model (``verify``: the checkpoint's checksums too)."""
    import torch

    from hpcdiff.config.checks import check_domain_grid, check_patch_fits, check_patch_grid
    from hpcdiff.data.cf import format_time
    from hpcdiff.data.errors import DataError
    from hpcdiff.data.normalize import Normalizer
    from hpcdiff.data.stream import open_sources
    from hpcdiff.experiment.config import load_config
    from hpcdiff.generate.distributed import precision_dtype

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir}: not a run directory (no config.yaml from training)")
    cfg = load_config(run_dir / "config.yaml", list(overrides))
    cuda = cfg.dist.device != "cpu" and torch.cuda.is_available()
    precision_dtype(cfg.sample.precision, torch.device("cuda" if cuda else "cpu"))
    ckpt = _checkpoint(run_dir / cfg.checkpoint.dir, verify)
    target = open_sources(cfg.data)["target"]
    grid = tuple(target.shape)
    check_patch_fits(cfg.data.patch_shape, grid)
    check_patch_grid(cfg.data.patch_shape, cfg.sample.overlap_pix, cfg.sample.boundary_pix)
    check_domain_grid(cfg.sample.domain_grid, world, grid)
    valid = target.time_indices(*cfg.data.time_range("valid"))
    if valid.size == 0:
        raise DataError(f"config key 'data.valid_time': no target time in {cfg.data.valid_time}")
    Normalizer.from_file(
        cfg.data.stats_file, "target", cfg.data.variables, cfg.data.log1p_variables
    )
    s = cfg.sample
    stride = [p - s.overlap_pix - s.boundary_pix for p in cfg.data.patch_shape]
    py, px = s.domain_grid
    return {
        "run_dir": str(run_dir),
        "checkpoint": ckpt,
        "grid": list(grid),
        "variables": list(cfg.data.variables),
        "times": [format_time(target.times[t], target.calendar) for t in valid[: s.times]],
        "ensemble": s.ensemble,
        "solver": s.solver,
        "num_steps": s.num_steps,
        "precision": s.precision,
        "compile": s.compile,
        "patch_shape": list(cfg.data.patch_shape),
        "patch_grid": [math.ceil(n / k) for n, k in zip(grid, stride)],
        "domain_grid": [py, px],
        "world": world,
        "data_groups": world // (py * px),
        "output": str(run_dir / "samples" / "samples.nc"),
    }


def _run(args: argparse.Namespace) -> int:
    from hpcdiff.distributed.env import resolve_env

    env = resolve_env()  # the launcher's layout; no process group is started here
    try:
        plan = sampling_plan(args.run_dir, args.overrides, args.dry_run, env.world_size)
        if args.dry_run:
            if env.rank == 0:
                print(json.dumps(plan, indent=1))
            return EXIT_OK
        from hpcdiff.generate.sample import generate

        result = generate(args.run_dir, args.overrides)
    except FileNotFoundError as err:
        print(f"hpcdiff sample: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(result, indent=1))
    return EXIT_OK


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "sample",
        help="generate ensembles from a trained run",
        description="Sample the run's validation times with its newest checkpoint (EMA "
        "weights): the whole domain is denoised as an overlapping grid of patches "
        "(multi-diffusion), optionally split into tiles over the ranks.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # Positional: torchrun's own parser would take `--run` for its `--run-path`.
    p.add_argument("run_dir", help="run directory written by `hpcdiff train`")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="check config, checkpoint checksums, data and geometry; print the plan; exit",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="overrides of the run's config, e.g. sample.ensemble=4 (docs/configs.md)",
    )
    p.set_defaults(func=_run)
