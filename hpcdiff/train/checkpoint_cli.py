"""``hpcdiff checkpoint``: consolidate sharded training checkpoints and inspect their manifests.

``PATH`` is one checkpoint directory (``.../checkpoints/step_000001200``), a checkpoints
directory, or a run directory written by ``hpcdiff train`` (its ``checkpoint.dir`` is read from
``config.yaml``). Exit codes: 0 success, 1 a checkpoint is corrupt or cannot be consolidated,
2 the path is not a checkpoint or the request does not fit it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from hpcdiff.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, print_error

CONSOLIDATE_EXAMPLES = """examples:
  # EMA weights of the newest verified checkpoint of a run -> runs/quickstart/model.mdlus
  hpcdiff checkpoint consolidate runs/quickstart
  # only the inference network (MultiDiffusionModel2D), raw training weights
  hpcdiff checkpoint consolidate runs/quickstart/checkpoints/step_000000300 \\
      --submodule model --weights model -o net.mdlus
"""
INSPECT_EXAMPLES = """examples:
  # manifest and checksum verification of every checkpoint of a run
  hpcdiff checkpoint inspect runs/quickstart
  hpcdiff checkpoint inspect runs/quickstart/checkpoints/step_000000300 --json
"""
EXAMPLES = CONSOLIDATE_EXAMPLES + INSPECT_EXAMPLES.removeprefix("examples:\n")


class UsageError(ValueError):
    """The path or the request does not fit a checkpoint (exit code 2)."""


def _checkpoint_root(path: Path) -> Path:
    """The directory holding ``step_*`` checkpoints for a run or checkpoints directory."""
    from hpcdiff.config import ConfigError, read_yaml

    if not (path / "config.yaml").is_file():
        return path
    try:
        section = read_yaml(path / "config.yaml").get("checkpoint") or {}
    except ConfigError:
        section = {}
    return path / str(section.get("dir", "checkpoints"))


def checkpoints_under(path: str | Path) -> list[Path]:
    """Checkpoint directories named by ``path``, newest first (UsageError when there are none)."""
    from hpcdiff.distributed.checkpoint import list_checkpoints

    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: no such file or directory")
    if (path / "manifest.json").is_file():
        return [path]
    if not path.is_dir():
        raise UsageError(f"{path}: not a directory")
    found = list_checkpoints(_checkpoint_root(path))
    if not found:
        raise UsageError(
            f"{path}: neither a checkpoint (no manifest.json) nor a run or checkpoints directory "
            "holding step_* checkpoints"
        )
    return found


def _manifest(path: Path) -> dict:
    from hpcdiff.distributed.checkpoint import read_manifest

    try:
        return read_manifest(path)
    except ValueError as err:
        raise UsageError(str(err)) from None


def describe_checkpoint(path: Path, verify: bool = True) -> dict[str, Any]:
    """Manifest summary of one checkpoint plus the problems checksum verification found."""
    from hpcdiff.distributed.checkpoint import read_manifest, verify_checkpoint

    try:
        manifest = read_manifest(path)
    except ValueError as err:  # an unreadable manifest is a corrupt checkpoint
        manifest, unreadable = {}, [str(err)]
    else:
        unreadable = []
    files = manifest.get("files", {})
    spec = manifest.get("model_spec") or {}
    out = {
        "path": str(path),
        "step": manifest.get("step"),
        "zero_stage": manifest.get("zero_stage"),
        "world_size": manifest.get("world_size"),
        "has_ema": manifest.get("has_ema"),
        "created": manifest.get("created"),
        "model": spec.get("class"),
        "total_bytes": sum(f["bytes"] for f in files.values()),
        "files": files,
        "verified": verify,
        "problems": unreadable or (verify_checkpoint(path) if verify else []),
    }
    out["ok"] = not out["problems"]
    return out


def _size(n: float) -> str:
    """Bytes in B, KiB, MiB or GiB."""
    unit = "B"
    for larger in ("KiB", "MiB", "GiB"):
        if n < 1024:
            break
        n, unit = n / 1024, larger
    return f"{n:.0f} B" if unit == "B" else f"{n:.2f} {unit}"


def format_checkpoint(info: dict[str, Any]) -> str:
    """Human-readable block for one :func:`describe_checkpoint` result."""
    ema = "yes" if info["has_ema"] else "no"
    lines = [
        f"checkpoint {info['path']}",
        f"  step {info['step']}, ZeRO stage {info['zero_stage']}, world size "
        f"{info['world_size']}, EMA {ema}, created {info['created']}",
        f"  model {info['model'] or '(not an hpcdiff Module: no .mdlus export)'}",
        f"  files ({len(info['files'])}, {_size(info['total_bytes'])}):",
    ]
    width = max((len(name) for name in info["files"]), default=0)
    for name, f in sorted(info["files"].items()):
        lines.append(f"    {name:<{width}}  {_size(f['bytes']):>10}  sha256 {f['sha256'][:16]}")
    if info["problems"]:
        lines.append(f"  verification: FAILED ({len(info['problems'])} problem(s))")
        lines.extend(f"    {problem}" for problem in info["problems"])
    elif info["verified"]:
        lines.append("  verification: OK (every file matches its size and sha256)")
    else:
        lines.append("  verification: skipped")
    return "\n".join(lines)


def _inspect(args: argparse.Namespace) -> int:
    paths = checkpoints_under(args.path)
    infos = [describe_checkpoint(p, verify=not args.no_verify) for p in paths]
    if args.json:
        print(json.dumps({"checkpoints": infos}, indent=1))
    else:
        print("\n\n".join(format_checkpoint(info) for info in infos))
    bad = [info["path"] for info in infos if not info["ok"]]
    if bad:
        print_error("checkpoint inspect", f"corrupt or incomplete: {', '.join(bad)}")
        return EXIT_FAILURE
    return EXIT_OK


def _select(path: Path) -> Path:
    """The checkpoint to consolidate: ``path`` itself, else the newest that verifies."""
    from hpcdiff.distributed.checkpoint import find_latest

    found = checkpoints_under(path)
    if found == [path]:
        return path
    newest = find_latest(found[0].parent)
    if newest is None:
        raise RuntimeError(f"{path}: no checkpoint passes verification")
    return newest


def _default_output(path: Path, ckpt: Path, submodule: str | None) -> Path:
    """``<run>/model.mdlus`` for a run directory (what ``hpcdiff sample`` reads), else
    ``<checkpoints>/step_N.mdlus``; a submodule export appends ``-<submodule>`` to the stem."""
    run = (path / "config.yaml").is_file()
    folder, stem = (path, "model") if run else (ckpt.parent, ckpt.name)
    return folder / (f"{stem}-{submodule}.mdlus" if submodule else f"{stem}.mdlus")


def _consolidate(args: argparse.Namespace) -> int:
    from hpcdiff.distributed import consolidate_checkpoint

    path = Path(args.path)
    ckpt = _select(path)
    manifest = _manifest(ckpt)
    if args.weights == "ema" and not manifest.get("has_ema"):
        raise UsageError(f"{ckpt}: --weights ema, but the checkpoint holds no EMA")
    output = Path(args.output) if args.output else _default_output(path, ckpt, args.submodule)
    weights = args.weights
    if weights == "auto":
        weights = "ema" if manifest.get("has_ema") else "model"
    try:
        with contextlib.redirect_stdout(sys.stderr):  # DeepSpeed's progress messages
            consolidate_checkpoint(ckpt, output, weights=weights, submodule=args.submodule)
    except (ValueError, FileNotFoundError) as err:
        raise RuntimeError(str(err)) from None
    part = f", submodule {args.submodule!r}" if args.submodule else ""
    print(
        f"wrote {output} ({_size(output.stat().st_size)}): {weights} weights of step "
        f"{manifest['step']} from {ckpt}{part}"
    )
    return EXIT_OK


def _guarded(run):
    def call(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except UsageError as err:
            print_error(f"checkpoint {args.checkpoint_command}", err)
            return EXIT_USAGE
        except (RuntimeError, OSError) as err:
            print_error(f"checkpoint {args.checkpoint_command}", err)
            return EXIT_FAILURE

    return call


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "checkpoint",
        help="consolidate or inspect training checkpoints",
        description="Consolidate sharded ZeRO checkpoints into one file for inference, or "
        "print their manifests and verify their checksums.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="checkpoint_command", metavar="ACTION", required=True)
    c = sub.add_parser(
        "consolidate",
        help="write one float32 file (.mdlus: Module.from_checkpoint; else a state dict)",
        description="Join the ZeRO shards of one checkpoint (a run's newest that verifies, "
        "by default) into one float32 file: EMA or raw training weights, the whole trained "
        "module or one submodule. Runs in one process, no GPU needed.",
        epilog=CONSOLIDATE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument("path", metavar="RUN_OR_CKPT_DIR")
    c.add_argument(
        "-o",
        "--output",
        help="output file; .mdlus loads with Module.from_checkpoint, other names get a "
        "torch state dict (default: <run>/model.mdlus or <checkpoints>/step_N.mdlus, "
        "'-<submodule>' added to the stem with --submodule)",
    )
    c.add_argument(
        "--weights",
        choices=("auto", "ema", "model"),
        default="auto",
        help="EMA or raw training weights (auto: EMA when present)",
    )
    c.add_argument(
        "--submodule",
        help="export only this dotted submodule, e.g. 'model' (the inference network)",
    )
    c.set_defaults(func=_guarded(_consolidate))
    i = sub.add_parser(
        "inspect",
        help="print manifests and verify checksums (exit 1 if corrupt)",
        description="Print each checkpoint's step, ZeRO stage, world size, EMA and files, and "
        "verify every file's size and sha256 against the manifest.",
        epilog=INSPECT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    i.add_argument("path", metavar="RUN_OR_CKPT_DIR")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    i.add_argument("--no-verify", action="store_true", help="skip the sha256 verification")
    i.set_defaults(func=_guarded(_inspect))
