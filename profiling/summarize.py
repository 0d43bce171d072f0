#!/usr/bin/env python3
"""One table per NVTX range from recorder logs or Nsight Systems output, one or many ranks.

Inputs (mix freely; each file or process counts as one rank):

* recorder logs ``nvtx-<pid>.tsv`` (or a directory of them) written by ``nvtx_recorder.c``;
* ``nsys stats -q --report nvtxsum --format csv REPORT.nsys-rep`` output saved to ``*.csv``;
* the SQLite export ``REPORT.sqlite`` (``nsys stats`` writes it): split per process.

Columns: count, total ms, mean ms, % of the root range (``train.step`` or ``sample`` by
default), and imbalance = max over ranks / mean over ranks of the range's total time (1.00 is
perfectly balanced). Usage: ``summarize.py [--root NAME] [--domain hpcdiff] INPUT...``.
``--domain DeepSpeed`` shows DeepSpeed's own ranges (forwarded when profiling is on), and
``--domain ''`` every domain, names written ``domain:name`` as ``nsys stats`` does.
"""

from __future__ import annotations

import argparse
import csv
import io
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ROOTS = ("train.step", "sample", "hpcdiff:train.step", "hpcdiff:sample")


@dataclass(frozen=True)
class Range:
    """One closed range of one thread; ``path`` lists the enclosing names, outermost first."""

    name: str
    domain: str
    tid: int
    start_ns: int
    end_ns: int
    path: tuple[str, ...]


@dataclass
class Process:
    """What the recorder saw in one process: ranges, marks and balance errors."""

    pid: int
    rank: int
    ranges: list[Range]
    marks: list[str]
    errors: list[str]

    @property
    def label(self) -> str:
        return f"rank {self.rank}" if self.rank >= 0 else f"pid {self.pid}"


def read_recorder_log(path: str | Path) -> Process:
    """Rebuild nested ranges per thread from one recorder log; orphan pops and unclosed pushes
    are reported in ``errors``."""
    lines = Path(path).read_text().splitlines()
    if not lines:
        return Process(int(Path(path).stem.split("-")[-1]), -1, [], [], ["empty log"])
    head = lines[0].split()  # "# pid P rank R ppid Q"
    proc = Process(int(head[2]), int(head[4]), [], [], [])
    stacks: dict[tuple[int, str], list[tuple[str, int]]] = {}
    started: dict[int, tuple[str, str, int, int]] = {}
    for line in lines[1:]:
        t, tid, event, rid, domain, msg = line.split("\t", 5)
        stack = stacks.setdefault((int(tid), domain), [])
        if event == "push":
            stack.append((msg, int(t)))
        elif event == "pop":
            if not stack:
                proc.errors.append(f"orphan pop on thread {tid} (domain {domain!r})")
                continue
            name, t0 = stack.pop()
            path_ = tuple(n for n, _ in stack)
            proc.ranges.append(Range(name, domain, int(tid), t0, int(t), path_))
        elif event == "start":
            started[int(rid)] = (msg, domain, int(tid), int(t))
        elif event == "end" and int(rid) in started:
            name, dom, tid0, t0 = started.pop(int(rid))
            proc.ranges.append(Range(name, dom, tid0, t0, int(t), ()))
        elif event == "mark":
            proc.marks.append(msg)
    for (tid, _), stack in stacks.items():
        for name, _ in stack:
            proc.errors.append(f"range {name!r} pushed on thread {tid} was never popped")
    for name, _, tid, _ in started.values():
        proc.errors.append(f"range {name!r} started on thread {tid} was never ended")
    return proc


def read_recorder_dir(directory: str | Path) -> list[Process]:
    """Every ``nvtx-*.tsv`` log in ``directory``, sorted by rank then pid."""
    procs = [read_recorder_log(p) for p in sorted(Path(directory).glob("nvtx-*.tsv"))]
    return sorted(procs, key=lambda p: (p.rank < 0, p.rank, p.pid))


Totals = dict[str, tuple[int, float]]  # range name -> (count, total ns)


def _key(name: str, domain: str, only: str | None) -> str | None:
    """The table name of a range: bare within ``only``, ``domain:name`` when showing all."""
    if only is not None:
        return name if domain == only else None
    return f"{domain}:{name}" if domain else name


def totals_from_process(proc: Process, domain: str | None = "hpcdiff") -> Totals:
    out: dict[str, tuple[int, float]] = {}
    for r in proc.ranges:
        key = _key(r.name, r.domain, domain)
        if key is not None:
            count, total = out.get(key, (0, 0.0))
            out[key] = (count + 1, total + (r.end_ns - r.start_ns))
    return out


def totals_by_rank(procs: list[Process], domain: str | None = "hpcdiff") -> dict[str, Totals]:
    """Totals per rank label; processes sharing a rank (forked data workers) are added up."""
    out: dict[str, dict[str, tuple[int, float]]] = {}
    for proc in procs:
        merged = out.setdefault(proc.label, {})
        for name, (count, total) in totals_from_process(proc, domain).items():
            c0, t0 = merged.get(name, (0, 0.0))
            merged[name] = (c0 + count, t0 + total)
    return out


def _strip(name: str, domain: str | None) -> str | None:
    if domain is None:
        return name
    prefix = f"{domain}:"
    return name[len(prefix) :] if name.startswith(prefix) else None


def totals_from_nsys_csv(text: str, domain: str | None = "hpcdiff") -> Totals:
    """Parse ``nsys stats --report nvtxsum --format csv`` (ranges read ``domain:name``)."""
    body = text[text.index("Time (%)") :] if "Time (%)" in text else ""
    out: dict[str, tuple[int, float]] = {}
    for row in csv.DictReader(io.StringIO(body)):
        name = _strip(row["Range"], domain)
        if name is not None:
            out[name] = (int(row["Instances"]), float(row["Total Time (ns)"]))
    return out


def totals_from_nsys_sqlite(path: str | Path, domain: str | None = "hpcdiff") -> dict[int, Totals]:
    """Per-process totals from an nsys SQLite export (push/pop and start/end ranges)."""
    query = """
        SELECT e.globalTid / 16777216 % 16777216 AS pid, d.text AS domain,
               COALESCE(e.text, s.value) AS name, COUNT(*), SUM(e."end" - e.start)
        FROM NVTX_EVENTS e
        LEFT JOIN StringIds s ON s.id = e.textId
        LEFT JOIN NVTX_EVENTS d ON d.eventType = 75 AND d.domainId = e.domainId
            AND d.globalTid / 16777216 = e.globalTid / 16777216
        WHERE e.eventType IN (59, 60) AND e."end" IS NOT NULL
        GROUP BY pid, domain, name"""
    out: dict[int, dict[str, tuple[int, float]]] = {}
    with sqlite3.connect(str(path)) as db:
        for pid, dom, name, count, total in db.execute(query):
            key = _key(name, dom or "", domain)
            if key is not None:
                out.setdefault(int(pid), {})[key] = (int(count), float(total))
    return out


def load(inputs: list[str], domain: str | None) -> dict[str, Totals]:
    """Read every input into per-rank totals keyed by a label."""
    per_rank: dict[str, Totals] = {}
    for item in inputs:
        path = Path(item)
        if path.is_dir() or path.suffix == ".tsv":
            procs = read_recorder_dir(path) if path.is_dir() else [read_recorder_log(path)]
            for label, totals in totals_by_rank(procs, domain).items():
                per_rank[f"{path.name}:{label}"] = totals
        elif path.suffix == ".sqlite":
            for pid, totals in sorted(totals_from_nsys_sqlite(path, domain).items()):
                per_rank[f"{path.name}:pid {pid}"] = totals
        else:
            per_rank[path.name] = totals_from_nsys_csv(path.read_text(), domain)
    return per_rank


def table(per_rank: dict[str, Totals], root: str | None = None) -> list[dict]:
    """Rows ``{range, count, total_ms, mean_ms, pct_root, imbalance}``, sorted by total time."""
    names = sorted({n for totals in per_rank.values() for n in totals})
    if root is None:
        root = next((r for r in DEFAULT_ROOTS if r in names), None)
    root_total = sum(t.get(root, (0, 0.0))[1] for t in per_rank.values()) if root else 0.0
    rows = []
    for name in names:
        per = [t.get(name, (0, 0.0)) for t in per_rank.values()]
        count = sum(c for c, _ in per)
        total = sum(s for _, s in per)
        mean_rank = total / len(per)
        rows.append(
            {
                "range": name,
                "count": count,
                "total_ms": total / 1e6,
                "mean_ms": total / count / 1e6 if count else 0.0,
                "pct_root": 100.0 * total / root_total if root_total else None,
                "imbalance": max(s for _, s in per) / mean_rank if mean_rank else 1.0,
            }
        )
    return sorted(rows, key=lambda r: -r["total_ms"])


def _fit(name: str, width: int) -> str:
    """``name`` cut to ``width - 1`` characters, keeping its end (DeepSpeed's qualified names)."""
    return name if len(name) < width else "..." + name[len(name) - width + 4 :]


def format_table(rows: list[dict], ranks: int, root: str | None) -> str:
    width = min(max([18, *(len(r["range"]) + 2 for r in rows)]), 56)
    pct_head = "% " + (root or "root")
    pw = max(14, len(pct_head) + 2)
    head = f"{'range':<{width}}{'count':>7}{'total ms':>11}{'mean ms':>10}"
    head += f"{pct_head:>{pw}}{'imbalance':>11}"
    out = [f"NVTX ranges over {ranks} rank(s)", head]
    for r in rows:
        pct = f"{r['pct_root']:.1f}" if r["pct_root"] is not None else "-"
        out.append(
            f"{_fit(r['range'], width):<{width}}{r['count']:>7}{r['total_ms']:>11.3f}"
            f"{r['mean_ms']:>10.3f}{pct:>{pw}}{r['imbalance']:>11.2f}"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", help="recorder logs/dirs, nvtxsum CSVs, .sqlite")
    parser.add_argument("--root", help="range whose total is 100%% (default train.step/sample)")
    parser.add_argument("--domain", default="hpcdiff", help="NVTX domain ('' for all)")
    args = parser.parse_args(argv)
    per_rank = load(args.inputs, args.domain or None)
    if not any(per_rank.values()):
        print(f"no NVTX ranges of domain {args.domain!r} in {args.inputs}", file=sys.stderr)
        return 1
    rows = table(per_rank, args.root)
    root = args.root or next((r for r in DEFAULT_ROOTS if any(x["range"] == r for x in rows)), None)
    print(format_table(rows, len(per_rank), root))
    return 0


if __name__ == "__main__":
    sys.exit(main())
