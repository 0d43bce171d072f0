"""``hpcdiff data synth|stats|inspect``: the data commands (exit 0 ok, 1 failure, 2 bad input)."""

from __future__ import annotations

import argparse
import time

from hpcdiff.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, print_error
from hpcdiff.config import ConfigError
from hpcdiff.data.errors import DataError

SYNTH_EXAMPLES = """\
examples:
  # the quickstart dataset (256 x 256, 4 variables, 96 hourly steps in 4 files) + stats.json
  hpcdiff data synth --out data/synth

  # a 2048 x 2048 grid over the Alps, 8x coarser condition, 256 x 256 chunks
  hpcdiff data synth --out data/alps --shape 2048 2048 --box 44 48.5 5 11 --chunk 256

  # WRF output (NetCDF3, Times, XLAT/XLONG, staggered U/V) of a nest d02 in its parent d01
  hpcdiff data synth --out data/wrf --format wrf

  # then look at it, and train with the config section it wrote
  hpcdiff data inspect data/synth/fine_000.nc
  cat data/synth/data.yaml
"""

STATS_EXAMPLES = """\
examples:
  hpcdiff data stats --config data/synth/data.yaml            # writes data.stats_file
  hpcdiff data stats data/era/*.nc --variables t2m tp --log1p tp -o stats.json
  # WRF output as written: staggered U at the lowest model level, de-staggered
  hpcdiff data stats wrfout_d02_* --variables T2 U --levels bottom_top=0 -o stats.json
"""

INSPECT_EXAMPLES = """\
examples:
  hpcdiff data inspect data/synth/fine_000.nc
  # warnings and the nccopy rechunk command for 128 x 128 training patches
  hpcdiff data inspect /archive/era5/t2m_*.nc --patch 128 128
"""

DATA_EXAMPLES = """\
examples:
  hpcdiff data synth --out data/quickstart --shape 128 128 --times 48 --files 2
  hpcdiff data inspect data/quickstart/fine_000.nc
  hpcdiff data stats --config data/quickstart/data.yaml
"""


def _fail(command: str, err: BaseException) -> int:
    bad_input = isinstance(err, (DataError, ConfigError, ValueError, TypeError, KeyError))
    print_error(f"data {command}", err)
    return EXIT_USAGE if bad_input else EXIT_FAILURE


def run_synth(args: argparse.Namespace) -> int:
    from hpcdiff.data.synth import SynthConfig, write_dataset

    try:
        cfg = SynthConfig(
            out_dir=args.out,
            shape=tuple(args.shape),
            n_times=args.times,
            n_files=args.files,
            variables=tuple(args.variables),
            box=tuple(args.box),
            start=args.start,
            step_hours=args.step_hours,
            coarse_factor=args.coarse_factor,
            chunk=args.chunk,
            complevel=args.complevel,
            significant_digits=args.significant_digits or None,
            seed=args.seed,
            format=args.format,
        )
        t0 = time.perf_counter()
        write_dataset(cfg, log=print)
        print(f"wrote {args.out}/data.yaml ({time.perf_counter() - t0:.1f} s)")
        if not args.no_stats:
            return run_stats(
                argparse.Namespace(
                    paths=[],
                    config=f"{args.out}/data.yaml",
                    output=None,
                    variables=None,
                    log1p=[],
                    static=False,
                    split="train",
                    chunk_mb=32,
                    workers=None,
                    levels=[],
                )
            )
    except (DataError, ConfigError, ValueError, OSError) as err:
        return _fail("synth", err)
    return EXIT_OK


def _stats_from_config(args: argparse.Namespace):
    from hpcdiff.config import from_dict, read_yaml
    from hpcdiff.data.config import DataConfig
    from hpcdiff.data.stream import open_sources

    raw = read_yaml(args.config)
    cfg = from_dict(DataConfig, raw.get("data", raw), "data")
    sources = open_sources(cfg)
    index = {}
    if args.split != "all":
        start, end = cfg.time_range(args.split)
        for group in ("target", "condition"):
            if group in sources:
                index[group] = sources[group].time_indices(start, end)
    output = args.output or cfg.stats_file
    if output is None:
        raise ConfigError("config key 'data.stats_file' is not set; pass -o OUT.json")
    return sources, cfg.log1p_variables, index, output


def _levels(items: list[str]) -> dict[str, int]:
    """``["bottom_top=0"]`` -> ``{"bottom_top": 0}`` (the --levels option)."""
    out = {}
    for item in items:
        dim, _, index = item.partition("=")
        if not dim or not index.strip().isdigit():
            raise ValueError(f"--levels {item!r}: expected DIMENSION=INDEX, e.g. bottom_top=0")
        out[dim] = int(index)
    return out


def run_stats(args: argparse.Namespace) -> int:
    from hpcdiff.data.reader import GridSource
    from hpcdiff.data.stats import compute_stats, write_stats

    try:
        if args.config:
            sources, log1p, index, output = _stats_from_config(args)
        else:
            if not args.paths or not args.variables or not args.output:
                raise ValueError("give --config, or PATHS with --variables and -o OUT.json")
            group = "static" if args.static else "target"
            source = GridSource(args.paths, args.variables, timed=not args.static, name=group,
                                levels=_levels(args.levels))  # fmt: skip
            sources, log1p, index, output = {group: source}, args.log1p, None, args.output
        t0 = time.perf_counter()
        stats = compute_stats(
            sources, log1p, index, target_bytes=args.chunk_mb * 2**20, num_workers=args.workers
        )
        write_stats(stats, output)
    except (DataError, ConfigError, ValueError, OSError) as err:
        return _fail("stats", err)
    for group, entries in stats["groups"].items():
        for var, s in entries.items():
            print(
                f"{group:9s} {var:12s} mean {s['mean']:.6g} std {s['std']:.6g} "
                f"min {s['min']:.6g} max {s['max']:.6g} missing {s['missing']}"
            )
    print(f"wrote {output} ({time.perf_counter() - t0:.1f} s)")
    return EXIT_OK


def run_inspect(args: argparse.Namespace) -> int:
    from hpcdiff.data.inspect import inspect_paths

    try:
        report, n_warnings = inspect_paths(args.paths, args.patch)
    except (DataError, OSError) as err:
        return _fail("inspect", err)
    print(report)
    print(f"{len(args.paths)} file(s), {n_warnings} warning(s)")
    return EXIT_OK


def _add_synth(sub) -> None:
    from hpcdiff.data.synth import DEFAULT_VARIABLES, FORMATS, VARIABLES

    p = sub.add_parser(
        "synth",
        help="write the synthetic km-scale NetCDF dataset",
        description="Write a CF-compliant multi-file km-scale dataset (fine + coarse + static), "
        "its data: config section and normalization statistics.",
        epilog=SYNTH_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="data/synth", help="output directory (default: %(default)s)")
    p.add_argument("--shape", type=int, nargs=2, default=[256, 256], metavar=("H", "W"))
    p.add_argument("--times", type=int, default=96, help="time steps (default: %(default)s)")
    p.add_argument("--files", type=int, default=4, help="files along time (default: %(default)s)")
    p.add_argument("--variables", nargs="+", default=list(DEFAULT_VARIABLES), choices=VARIABLES)
    p.add_argument(
        "--box",
        type=float,
        nargs=4,
        default=[54.0, 58.0, 7.0, 13.0],
        metavar=("SOUTH", "NORTH", "WEST", "EAST"),
        help="lat/lon box in degrees",
    )
    p.add_argument("--start", default="2020-06-01T00:00:00", help="first time (ISO)")
    p.add_argument("--step-hours", type=float, default=1.0)
    p.add_argument("--coarse-factor", type=int, default=8)
    p.add_argument("--chunk", type=int, default=128, help="HDF5 chunk rows/cols")
    p.add_argument("--complevel", type=int, default=4, help="zlib level, 0 = uncompressed")
    p.add_argument("--significant-digits", type=int, default=3, help="0 = no quantization")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--format",
        choices=FORMATS,
        default="netcdf4",
        help="netcdf4 (chunked, zlib), netcdf3 (64-bit offset, contiguous) or wrf "
        "(wrfout_d01/d02 files as WRF writes them) (default: %(default)s)",
    )
    p.add_argument("--no-stats", action="store_true", help="skip stats.json")
    p.set_defaults(func=run_synth)


def register(subparsers) -> None:
    """Add ``hpcdiff data`` with its subcommands to the top-level parser."""
    data = subparsers.add_parser(
        "data",
        help="NetCDF datasets: synth, stats, inspect",
        description="Prepare NetCDF inputs: write the synthetic km-scale dataset, compute "
        "normalization statistics, check dimensions and storage layout (docs/data.md).",
        epilog=DATA_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    data.set_defaults(func=lambda args: data.print_help() or EXIT_USAGE)
    _add_synth(sub)
    p = sub.add_parser(
        "stats",
        help="per-variable mean/std/min/max/missing (out of core, dask)",
        description="Per-variable normalization statistics (mean, std, min, max, missing "
        "count) of the training times, computed out of core with dask, written as JSON for "
        "data.stats_file.",
        epilog=STATS_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("paths", nargs="*", help="NetCDF files (without --config)")
    p.add_argument("--config", help="YAML file with a data: section")
    p.add_argument("-o", "--output", help="JSON to write (default: data.stats_file)")
    p.add_argument("--variables", nargs="+")
    p.add_argument("--log1p", nargs="+", default=[], help="variables to log1p-transform")
    p.add_argument("--static", action="store_true", help="the files hold static fields")
    p.add_argument(
        "--levels",
        nargs="+",
        default=[],
        metavar="DIM=INDEX",
        help="index read on extra dimensions, e.g. bottom_top=0 (as data.levels)",
    )
    p.add_argument("--split", choices=("train", "valid", "all"), default="train")
    p.add_argument("--chunk-mb", type=int, default=32, help="dask chunk size (>= 16 advised)")
    p.add_argument("--workers", type=int, default=None, help="dask threads")
    p.set_defaults(func=run_stats)
    p = sub.add_parser(
        "inspect",
        help="dims, coords, chunking, compression; slow-layout warnings",
        description="Print each file's dimensions, coordinates (with the CF axis found), "
        "variables, chunking and compression, and warn about layouts that make window reads "
        "slow, with the nccopy command that rechunks them.",
        epilog=INSPECT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("paths", nargs="+", help="NetCDF files")
    p.add_argument(
        "--patch",
        type=int,
        nargs=2,
        default=[256, 256],
        metavar=("H", "W"),
        help="training patch the chunking advice is for (default: 256 256)",
    )
    p.set_defaults(func=run_inspect)
