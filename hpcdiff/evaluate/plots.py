"""PNG plots of an evaluation (matplotlib, Agg backend): maps, spectra, rank histograms, losses.

Maps are drawn on the grid's index space (rows up), or, when the samples file names 2-D
latitude/longitude coordinates (WRF ``XLAT``/``XLONG``, CF curvilinear grids), as cells placed
at their longitude/latitude (``pcolormesh``, no map projection or coastlines). 2-D coordinates
that cannot be used (missing values, another shape) are reported in one log line and the map
falls back to index space.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

MAX_MAP_PIXELS = 1024  # maps are subsampled to at most this many pixels per side
log = logging.getLogger(__name__)
_LAT_UNITS = ("degrees_north", "degree_north", "degree_n", "degrees_n")
_LON_UNITS = ("degrees_east", "degree_east", "degree_e", "degrees_e")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def map_step(shape) -> int:
    """Subsampling step of maps of a grid of ``shape``: at most MAX_MAP_PIXELS per side."""
    return max(1, math.ceil(max(shape) / MAX_MAP_PIXELS))


def _coord_kind(var: Any) -> str | None:
    std = str(getattr(var, "standard_name", "")).lower()
    units = str(getattr(var, "units", "")).lower().replace(" ", "")
    if std == "latitude" or units in _LAT_UNITS:
        return "lat"
    if std == "longitude" or units in _LON_UNITS:
        return "lon"
    return None


def map_coords(nc: Any, variable: str, step: int) -> tuple[np.ndarray, np.ndarray] | None:
    """2-D (lat, lon) every ``step`` cells of the coordinates that ``variable`` names in the
    open netCDF4 dataset ``nc``, or None (rectilinear grid, or unusable coordinates: logged)."""
    var = nc[variable]
    ydim, xdim = var.dimensions[-2:]
    found: dict[str, Any] = {}
    for name in str(getattr(var, "coordinates", "")).split():
        c = nc.variables.get(name)
        if c is not None and c.ndim == 2 and _coord_kind(c) is not None:
            found.setdefault(_coord_kind(c), c)
    if len(found) < 2:
        return None
    lat, lon = found["lat"], found["lon"]
    if lat.dimensions != (ydim, xdim) or lon.dimensions != (ydim, xdim):
        log.warning("%s: 2-D coordinates %s/%s are not on (%s, %s); map drawn on grid indices",
                    variable, lat.name, lon.name, ydim, xdim)  # fmt: skip
        return None
    values = [np.ma.filled(np.ma.asarray(c[::step, ::step], dtype=np.float64), np.nan)
              for c in (lat, lon)]  # fmt: skip
    if not all(np.isfinite(v).all() for v in values):
        log.warning("%s: 2-D coordinates %s/%s have missing values; map drawn on grid indices",
                    variable, lat.name, lon.name)  # fmt: skip
        return None
    return values[0], values[1]


def map_panels(
    ens: np.ndarray,
    truth: np.ndarray,
    members: int = 3,
    baseline: tuple[str, np.ndarray] | None = None,
) -> list[tuple[str, np.ndarray]]:
    """(title, field) panels of one time step: truth, the ``baseline`` (title, field) if
    given, the first ``members`` members, ensemble mean and std (ddof 0), subsampled to at
    most :data:`MAX_MAP_PIXELS` per side."""
    step = map_step(truth.shape)
    ens, truth = ens[:, ::step, ::step], truth[::step, ::step]  # (M, h, w), (h, w)
    panels = [("truth", truth)]
    if baseline is not None:
        panels.append((baseline[0], baseline[1][::step, ::step]))
    panels += [(f"member {m}", ens[m]) for m in range(min(members, ens.shape[0]))]
    panels += [("ensemble mean", ens.mean(0)), ("ensemble std", ens.std(0))]
    return panels


def plot_maps(path: Path, name: str, time: str, panels: list[tuple[str, np.ndarray]],
              coords: tuple[np.ndarray, np.ndarray] | None = None) -> Path:  # fmt: skip
    """Side-by-side maps; all but the std share the truth's 1-99 % colour range. ``coords``:
    2-D (lat, lon) of the panels' cells (:func:`map_coords`) to draw them at their place."""
    plt = _pyplot()
    truth = panels[0][1]
    finite = truth[np.isfinite(truth)]
    lo, hi = np.percentile(finite, [1, 99]) if finite.size else (None, None)
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), squeeze=False)
    for ax, (title, field) in zip(axes[0], panels):
        style = {"cmap": "magma"} if title == "ensemble std" else {
            "cmap": "viridis", "vmin": lo, "vmax": hi}  # fmt: skip
        if coords is not None and coords[0].shape == field.shape:
            lat, lon = coords
            im = ax.pcolormesh(lon, lat, field, shading="nearest", **style)
            ax.set_aspect(1.0 / max(math.cos(math.radians(float(np.mean(lat)))), 0.1))
            ax.tick_params(labelsize=7)
            ax.set_xlabel("longitude", fontsize=8)
        else:
            im = ax.imshow(field, origin="lower", **style)
            ax.set_xticks([])
            ax.set_yticks([])
        ax.set_title(f"{name}: {title}", fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle(f"{name} at {time}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _grid(n: int, plt, width: float = 4.0):
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, 3.3 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes.flat


def plot_spectra(path: Path, scores: dict[str, dict], band: list[float] | None = None) -> Path:
    """Log-log radially averaged power spectra per variable: truth, members, ensemble mean
    and every baseline (thin, dotted); the fine-scale ``band`` shaded."""
    plt = _pyplot()
    names = [v for v, s in scores.items() if s.get("spectra")]
    fig, axes = _grid(max(len(names), 1), plt)
    for ax, name in zip(axes, names):
        spec = scores[name]["spectra"]
        k = np.asarray(spec["wavenumber"])
        curves = [(spec[key], style, key.replace("_", " ")) for key, style in
                  (("truth", "k-"), ("members", "C0-"), ("ensemble_mean", "C1--"))]  # fmt: skip
        for i, (kind, base) in enumerate((scores[name].get("baselines") or {}).items()):
            if base.get("spectrum") is not None:
                curves.append((base["spectrum"], f"C{i + 2}:", kind))
        for values, style, label in curves:
            power = np.asarray(values, dtype=float)
            keep = (k > 0) & (power > 0)
            ax.loglog(k[keep], power[keep], style, label=label)
        if band is not None:
            ax.axvspan(*band, color="0.9", zorder=0, label="fine scales")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("wavenumber (cycles per domain)")
        ax.set_ylabel("power")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_rank_histograms(path: Path, scores: dict[str, dict]) -> Path:
    """Rank histograms as relative frequencies, with the flat 1 / (M + 1) line."""
    plt = _pyplot()
    fig, axes = _grid(len(scores), plt, width=3.5)
    for ax, (name, s) in zip(axes, scores.items()):
        counts = np.asarray(s["rank_histogram"], dtype=float)
        total = counts.sum()
        freq = counts / total if total else counts
        ax.bar(np.arange(counts.size), freq, color="C0", width=0.9)
        ax.axhline(1.0 / counts.size, color="k", linestyle="--", linewidth=1, label="flat")
        ax.set_title(f"{name} (n={int(total)})", fontsize=10)
        ax.set_xlabel("rank of the truth among members")
        ax.set_ylabel("frequency")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def read_metrics(path: Path) -> list[dict]:
    """Records of a training run's ``metrics.jsonl`` (blank lines skipped)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _number(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def plot_loss_curves(path: Path, records: list[dict]) -> Path | None:
    """Training loss (and per-variable losses, thin) and validation loss against the step."""
    train = [r for r in records if _number(r.get("loss"))]
    val = [r for r in records if _number(r.get("val_loss"))]
    if not train and not val:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.0))
    channels = sorted({c for r in train for c in r.get("loss_per_channel") or {}})
    for i, c in enumerate(channels):
        rows = [r for r in train if _number((r.get("loss_per_channel") or {}).get(c))]
        ax.plot([r["step"] for r in rows], [r["loss_per_channel"][c] for r in rows],
                color=f"C{i + 2}", linewidth=0.8, alpha=0.6, label=f"loss {c}")  # fmt: skip
    if train:
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], "C0-", label="loss")
    if val:
        steps, values = [r["step"] for r in val], [r["val_loss"] for r in val]
        ax.plot(steps, values, "C1o-", label="val_loss")
    values = [r["loss"] for r in train] + [r["val_loss"] for r in val]
    if min(values) > 0 and max(values) > 10 * min(values):  # log scale once it spans a decade
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
