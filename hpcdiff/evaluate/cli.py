"""``hpcdiff evaluate``: score generated ensembles against the truth (exit 0 ok, 2 bad input)."""

from __future__ import annotations

import argparse
from pathlib import Path

from hpcdiff.cli import EXIT_OK, EXIT_USAGE, print_error
from hpcdiff.extras import require

EXAMPLES = """examples:
  # the run's newest samples file -> runs/quickstart/eval/{metrics.json,*.png}
  hpcdiff evaluate runs/quickstart
  hpcdiff evaluate runs/quickstart --samples runs/quickstart/samples/samples.nc --out eval_q
  # files from elsewhere: members (member, time, y, x) and a CF truth file matched by time
  hpcdiff evaluate --samples ens.nc --truth era5.nc --variables t2m tp --patch-shape 64 64 \\
      --overlap-pix 8
"""


def _table(result: dict) -> str:
    """One line per variable with the headline scores."""
    lines = [f"{'variable':<12} {'rmse':>10} {'crps':>10} {'spread/skill':>12} {'seam':>8} "
             f"{'imprint':>8}"]  # fmt: skip
    for name, s in result["scores"].items():
        seam = (s.get("seam") or {}).get("score")
        cells = [s["rmse"], s["crps"], s["spread_skill"], seam, s.get("coarse_imprint")]
        text = ["-" if v is None else f"{v:.4g}" for v in cells]
        lines.append(f"{name:<12} {text[0]:>10} {text[1]:>10} {text[2]:>12} {text[3]:>8} "
                     f"{text[4]:>8}")  # fmt: skip
    return "\n".join(lines)


def _baseline_table(result: dict) -> str:
    """Per variable: the ensemble and each baseline (* the reference) with RMSE, CRPS (MAE
    for a baseline), the ensemble's skill against it and fine-scale power ratios."""
    head = (f"{'variable':<10} {'vs':<14} {'rmse':>9} {'crps|mae':>9} {'crps_skill':>10} "
            f"{'rmse_skill':>10} {'fine_power':>10}")  # fmt: skip
    lines = [head]

    def fmt(v):
        return "-" if v is None else f"{v:.4g}"

    for name, s in result["scores"].items():
        fine = (s.get("fine_power_ratio") or {}).get("members")
        lines.append(f"{name:<10} {'ensemble':<14} {fmt(s['rmse']):>9} {fmt(s['crps']):>9} "
                     f"{'':>10} {'':>10} {fmt(fine):>10}")  # fmt: skip
        for kind, b in (s.get("baselines") or {}).items():
            label = kind + (" *" if kind == s.get("reference_baseline") else "")
            cells = [b["rmse"], b["mae"], b["crps_skill"], b["rmse_skill"], b["fine_power_ratio"]]
            text = " ".join(f"{fmt(v):>{w}}" for v, w in zip(cells, (9, 9, 10, 10, 10)))
            lines.append(f"{'':<10} {label:<14} {text}")
    if not any(s.get("baselines") for s in result["scores"].values()):
        return f"baselines: none ({result.get('condition')})"
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    from hpcdiff.evaluate.run import PatchGrid, evaluate, evaluate_run

    if args.run_dir is None and args.samples is None:
        print_error("evaluate", "give a RUN_DIR or --samples FILE")
        return EXIT_USAGE
    if args.patch_shape is None and (args.overlap_pix or args.boundary_pix):
        print_error("evaluate", "--overlap-pix/--boundary-pix need --patch-shape")
        return EXIT_USAGE
    if not args.no_plots:
        require("matplotlib", "the PNG plots (leave them out with --no-plots)")
    grid = None
    if args.patch_shape is not None:
        grid = PatchGrid(tuple(args.patch_shape), args.overlap_pix, args.boundary_pix)
    common = dict(truth=args.truth and [args.truth], variables=args.variables, patch_grid=grid,
                  seed=args.seed, make_plots=not args.no_plots,
                  condition=args.condition and [args.condition])  # fmt: skip
    try:
        if args.run_dir is not None:
            result = evaluate_run(args.run_dir, samples=args.samples, out_dir=args.out, **common)
        else:
            out = args.out if args.out is not None else Path(args.samples).parent / "eval"
            result = evaluate(args.samples, out, **common)
    except (ValueError, FileNotFoundError) as err:  # ConfigError and DataError included
        print_error("evaluate", err)
        return EXIT_USAGE
    print(_table(result))
    print(_baseline_table(result))
    print(f"wrote {result['metrics_json']}")
    for path in result.get("plots", []):
        print(f"wrote {path}")
    return EXIT_OK


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="score generated ensembles: RMSE, CRPS, spread-skill, ranks, spectra, seams",
        description="Score a generated ensemble against the truth and write metrics.json and "
        "PNG plots (maps, power spectra, rank histograms, loss curves).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # fmt: off
    p.add_argument("run_dir", nargs="?", metavar="RUN_DIR",
                   help="run directory written by `hpcdiff train`")
    p.add_argument("--samples", metavar="FILE",
                   help="samples NetCDF file (default: the run's newest)")
    p.add_argument("--truth", metavar="FILE",
                   help="truth NetCDF file or glob (default: <var>_truth in the samples file, "
                   "else the run's data.files)")
    p.add_argument("--condition", metavar="FILE",
                   help="coarse condition NetCDF file or glob for the interpolation baselines "
                   "(default: the run's data.condition_files)")
    p.add_argument("--variables", nargs="+", metavar="NAME",
                   help="variables to score (default: all)")
    p.add_argument("--out", metavar="DIR", help="output directory (default: RUN_DIR/eval)")
    p.add_argument("--patch-shape", nargs=2, type=int, metavar=("ROWS", "COLS"),
                   help="sampling patch shape for the seam score (default: the samples "
                   "file's attributes, else the run's config)")
    p.add_argument("--overlap-pix", type=int, default=0, metavar="N",
                   help="patch overlap (with --patch-shape)")
    p.add_argument("--boundary-pix", type=int, default=0, metavar="N",
                   help="patch boundary pixels (with --patch-shape)")
    p.add_argument("--seed", type=int, default=0, metavar="N",
                   help="seed of the rank histogram tie breaks")
    p.add_argument("--no-plots", action="store_true", help="write metrics.json only")
    # fmt: on
    p.set_defaults(func=_run)
