"""Summary of the downscaling experiment (scripts/downscaling_experiment.sh): one table per
variable comparing interpolation, regression, plain and residual diffusion, a spectra figure,
and the issue's acceptance checks, from each run's ``eval/metrics.json``.

    python scripts/downscaling_summary.py runs/regression runs/plain runs/residual --out summary
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np


def _load(run: Path) -> dict:
    return json.loads((run / "eval" / "metrics.json").read_text())


def _interpolation(scores: dict) -> tuple[str, dict]:
    """(kind, scores) of the better-scoring interpolation (lower MAE) of one variable."""
    kinds = {k: b for k, b in scores["baselines"].items() if k in ("bicubic", "conservative")}
    kind = min(kinds, key=lambda k: kinds[k]["mae"])
    return kind, kinds[kind]


def rows(runs: dict[str, dict]) -> dict[str, list[dict]]:
    """Per variable: one row per method with RMSE, CRPS (MAE), spread-skill, fine-scale
    power ratio of the members, seam score and coarse-cell imprint."""
    out = {}
    ref = runs["plain"]["scores"]
    for name in ref:
        kind, interp = _interpolation(ref[name])
        table = [{"method": f"interpolation ({kind})", "rmse": interp["rmse"],
                  "crps": interp["mae"], "spread_skill": None,
                  "fine_power": interp["fine_power_ratio"], "seam": None,
                  "imprint": interp.get("coarse_imprint")}]  # fmt: skip
        for method, result in runs.items():
            s = result["scores"][name]
            deterministic = method == "regression"
            table.append({
                "method": method, "rmse": s["rmse"], "crps": s["crps"],
                "spread_skill": None if deterministic else s["spread_skill"],
                "fine_power": s["fine_power_ratio"]["members"],
                "seam": (s.get("seam") or {}).get("score"),
                "imprint": s.get("coarse_imprint"),
            })  # fmt: skip
        out[name] = table
    return out


def checks(table: dict[str, list[dict]]) -> list[tuple[str, bool, str]]:
    """The issue's "Must show" items on this experiment: (statement, met, numbers)."""

    def get(name, method):
        return next(r for r in table[name] if r["method"].startswith(method))

    names = list(table)
    res = {n: get(n, "residual") for n in names}
    plain = {n: get(n, "plain") for n in names}
    interp = {n: get(n, "interpolation") for n in names}
    fmt = lambda d, k: ", ".join(f"{n} {d[n][k]:.3g}" for n in names)  # noqa: E731
    wins = sum(res[n]["crps"] <= plain[n]["crps"] for n in names)
    return [
        (f"residual CRPS <= plain CRPS on >= 3 of {len(names)} variables ({wins})", wins >= 3,
         f"residual {fmt(res, 'crps')}; plain {fmt(plain, 'crps')}"),
        ("residual CRPS < interpolation MAE on every variable",
         all(res[n]["crps"] < interp[n]["crps"] for n in names),
         f"interpolation MAE {fmt(interp, 'crps')}"),
        ("residual members' fine-scale power within [0.67, 1.5] of the truth's",
         all(0.67 <= res[n]["fine_power"] <= 1.5 for n in names), fmt(res, "fine_power")),
        ("residual ensemble-mean RMSE <= interpolation RMSE on every variable",
         all(res[n]["rmse"] <= interp[n]["rmse"] for n in names),
         f"residual {fmt(res, 'rmse')}; interpolation {fmt(interp, 'rmse')}"),
        ("residual seam score <= 1.05 on every variable",
         all((res[n]["seam"] or math.inf) <= 1.05 for n in names), fmt(res, "seam")),
    ]  # fmt: skip


def markdown(table: dict[str, list[dict]], found: list) -> str:
    def cell(v):
        return "-" if v is None else f"{v:.3g}"

    lines = []
    for name, body in table.items():
        lines += [f"**{name}**", "", "| method | RMSE | CRPS (MAE) | spread/skill | fine-scale "
                  "power | seam | imprint |", "|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in body:
            keys = ("rmse", "crps", "spread_skill", "fine_power", "seam", "imprint")
            values = [r[k] for k in keys]
            lines.append(f"| {r['method']} | " + " | ".join(map(cell, values)) + " |")
        lines.append("")
    lines += ["| check | met | numbers |", "|---|---|---|"]
    lines += [f"| {what} | {'yes' if ok else 'no'} | {nums} |" for what, ok, nums in found]
    return "\n".join(lines) + "\n"


def plot_spectra(runs: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = runs["plain"]
    names = list(ref["scores"])
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        spec = ref["scores"][name]["spectra"]
        k = np.asarray(spec["wavenumber"])
        kind, interp = _interpolation(ref["scores"][name])
        curves = [("truth", spec["truth"], "k-"), (kind, interp["spectrum"], "C7:")]
        curves += [(m, runs[m]["scores"][name]["spectra"]["members"], f"C{i}-")
                   for i, m in enumerate(runs)]  # fmt: skip
        for label, power, style in curves:
            p = np.asarray(power, dtype=float)
            keep = (k > 0) & (p > 0)
            ax.loglog(k[keep], p[keep], style, label=label, linewidth=1.2)
        if ref.get("fine_band"):
            ax.axvspan(*ref["fine_band"], color="0.92", zorder=0)
        ax.set_title(name)
        ax.set_xlabel("wavenumber (cycles per domain)")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("power (members' mean)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("regression", type=Path)
    parser.add_argument("plain", type=Path)
    parser.add_argument("residual", type=Path)
    parser.add_argument("--out", type=Path, default=Path("summary"))
    args = parser.parse_args()
    runs = {m: _load(getattr(args, m)) for m in ("regression", "plain", "residual")}
    table = rows(runs)
    found = checks(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps({"table": table, "checks": [
        {"check": w, "met": ok, "numbers": n} for w, ok, n in found]}, indent=1))  # fmt: skip
    text = markdown(table, found)
    (args.out / "summary.md").write_text(text)
    plot_spectra(runs, args.out / "spectra.png")
    print(text)


if __name__ == "__main__":
    main()
