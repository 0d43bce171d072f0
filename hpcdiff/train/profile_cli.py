"""``hpcdiff profile doctor``: do this process's NVTX ranges reach the attached tool?

Run it exactly as the real job would run (same launcher, same ``nsys profile`` options); it
checks the injection the tool set up, whether the ``nvtx`` package hands out a real domain for
``hpcdiff`` ranges, and explains the fix when it does not. Exit code 0 when ranges reach a tool.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from importlib import metadata

_FIXES = {
    "no_tool": "no NVTX tool is attached (NVTX_INJECTION64_PATH is unset): run under "
    "`nsys profile -t nvtx ...` or `profiling/nvtx_record -- ...`",
    "old_nsys": "a tool is attached but the nvtx package got a DummyDomain: old Nsight Systems "
    "(e.g. 2022.4, Debian bookworm) answers nvtxDomainIsEnabled with 'no' for nvtx >= 0.2.12 "
    "(installed: {ver}). "
    "Put profiling/nsys_compat between nsys and the command "
    "(`nsys profile ... profiling/nsys_compat torchrun ...`) or use a newer Nsight Systems",
    "not_enabled": "ranges reach the tool, but hpcdiff's ranges are off in this process: set "
    "`profiling.nvtx: true` in the config or HPCDIFF_NVTX=1",
}


def diagnose() -> dict:
    """Facts about NVTX in this process and the verdict (``ok``) with a ``fix`` when not ok."""
    from hpcdiff import nvtx as seam

    report: dict = {
        "injection": os.environ.get("NVTX_INJECTION64_PATH"),
        "forward_to": os.environ.get("HPCDIFF_NVTX_FORWARD"),
        "hpcdiff_nvtx": os.environ.get("HPCDIFF_NVTX"),
        "seam_enabled": seam.enabled(),
    }
    try:
        import nvtx
    except ImportError:
        report.update(nvtx_version=None, domain=None, ok=False, fix="pip install nvtx")
        return report
    report["nvtx_version"] = metadata.version("nvtx")
    report["domain"] = type(nvtx.get_domain(seam.DOMAIN)).__name__
    reaches_tool = report["domain"] == "Domain"
    if not report["injection"]:
        report.update(ok=False, fix=_FIXES["no_tool"])
    elif not reaches_tool:
        report.update(ok=False, fix=_FIXES["old_nsys"].format(ver=report["nvtx_version"]))
    elif not report["seam_enabled"]:
        report.update(ok=False, fix=_FIXES["not_enabled"])
    else:
        report.update(ok=True, fix=None)
    return report


def _doctor(args: argparse.Namespace) -> int:
    report = diagnose()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            if key != "fix":
                print(f"{key:>14}: {value}")
        print("ranges reach the tool" if report["ok"] else f"problem: {report['fix']}")
    return 0 if report["ok"] else 1


EXAMPLES = """examples:
  # inside the profiled job, launched exactly like the real one:
  nsys profile -t nvtx -o report hpcdiff profile doctor
  profiling/nvtx_record -- hpcdiff profile doctor --json
  HPCDIFF_NVTX=1 hpcdiff profile doctor     # no tool attached: explains how to attach one

exit codes: 0 ranges reach the attached tool, 1 they do not (the report says why and the fix)
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``hpcdiff profile doctor``."""
    profile = subparsers.add_parser(
        "profile",
        help="profiling helpers (NVTX, Nsight Systems)",
        description="Profiling helpers. Range names, Nsight Systems recipes for torchrun, "
        "srun and mpirun, and the per-range summarizer are in profiling/README.md.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = profile.add_subparsers(dest="profile_command", metavar="SUBCOMMAND", required=True)
    doctor = sub.add_parser(
        "doctor",
        help="check that NVTX ranges reach the attached profiler",
        description="Check, inside a profiled process, whether hpcdiff's NVTX ranges reach the "
        "attached tool (Nsight Systems or profiling/nvtx_record): the injection library, the "
        "nvtx package's domain, hpcdiff's own switch; prints the fix when they do not.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    doctor.set_defaults(func=_doctor)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hpcdiff")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["profile", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
