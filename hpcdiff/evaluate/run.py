"""``hpcdiff evaluate``: skill scores, spectra and seam scores of a generated ensemble.

Reads one (member, y, x) slab per variable and time step, so the whole ensemble is never in
memory; writes ``metrics.json`` and PNG plots (maps, spectra, rank histograms, loss curves) to
the output directory. Definitions of the scores: :mod:`hpcdiff.evaluate.scores`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hpcdiff.evaluate import plots
from hpcdiff.evaluate.baselines import Baselines
from hpcdiff.evaluate.inputs import FileTruth, InFileTruth, SamplesFile, latest_samples
from hpcdiff.evaluate.scores import VariableScores, fine_band, fine_power_ratio, patch_lines, skill

DEFINITIONS = {
    "rmse": "sqrt(mean (ensemble mean - truth)^2) over valid points",
    "crps": "fair ensemble CRPS, E|X - y| - sum|x_i - x_j| / (2 M (M - 1)), mean over points",
    "spread": "sqrt(mean unbiased (ddof 1) ensemble variance) over valid points",
    "spread_skill": "sqrt((M + 1) / M) * spread / rmse (1 = reliable; Fortin et al. 2014)",
    "rank_histogram": "counts of the truth's rank among the M + 1 values, ties broken at random",
    "spectra": "radially averaged power spectra, mean over members and times",
    "seam.score": "R(members) / R(truth), R = mean squared difference across patch-boundary "
    "lines / across other lines of the axis at the same position within a condition cell (all "
    "other lines of the axis without a condition), averaged over positions and axes weighted by "
    "the patch lines' points (1 = no seams)",
    "coarse_imprint": "max / min over positions within a condition cell of the members' mean "
    "squared difference across grid lines there / the truth's (1 = no imprint of the coarse "
    "grid), the larger of the two axes",
    "all times": "scores over all times pool the valid points of every time step",
    "baselines": "bicubic / conservative interpolation of the coarse condition (and the "
    "regression mean of a residual run), scored as one-member ensembles on the ensemble's "
    "valid points (their CRPS is their MAE)",
    "crps_skill": "1 - CRPS / MAE of the baseline (> 0: the ensemble beats it)",
    "rmse_skill": "1 - RMSE / RMSE of the baseline",
    "fine_power_ratio": "sum of power / sum of the truth's power over wavenumbers in "
    "fine_band = (min(coarse h, w) / 2, min(H, W) / 2] cycles per domain",
}


@dataclass(frozen=True)
class PatchGrid:
    """The sampling patch grid: patch shape (rows, cols), overlap_pix and boundary_pix."""

    patch_shape: tuple[int, int]
    overlap_pix: int = 0
    boundary_pix: int = 0

    def lines(self, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Patch-boundary lines (rows, cols) on an image of ``shape``."""
        return tuple(
            patch_lines(n, p, self.overlap_pix, self.boundary_pix)
            for n, p in zip(shape, self.patch_shape)
        )

    def as_dict(self) -> dict:
        return {"patch_shape": list(self.patch_shape), "overlap_pix": self.overlap_pix,
                "boundary_pix": self.boundary_pix}  # fmt: skip


@dataclass
class Fallbacks:
    """What a run directory adds when the samples file lacks it: the truth files (the run's
    ``data.files``), their dimension overrides and the patch grid of the run's config."""

    truth_files: list[str] = field(default_factory=list)
    truth_dims: dict = field(default_factory=dict)
    patch_grid: PatchGrid | None = None
    truth_levels: dict = field(default_factory=dict)  # data.levels (WRF bottom_top, ...)
    condition_files: list[str] = field(default_factory=list)  # data.condition_files
    condition_variables: list[str] = field(default_factory=list)  # data.condition_variables
    # A residual run's regression mean, when fused on another patch grid than the samples
    # (residual_stats.json's mean_patching): its lines are patch lines too.
    mean_grid: PatchGrid | None = None


def _file_patch_grid(samples: SamplesFile) -> PatchGrid | None:
    """The patch grid recorded in the samples file's global attributes, if any."""
    attrs = {k: samples.ds.getncattr(k) for k in samples.ds.ncattrs()}
    if "patch_shape" not in attrs:
        return None
    shape = tuple(int(v) for v in np.atleast_1d(attrs["patch_shape"]))
    return PatchGrid(shape, int(attrs.get("overlap_pix", 0)), int(attrs.get("boundary_pix", 0)))


def _truth(samples: SamplesFile, truth: Sequence[str] | None, fallbacks: Fallbacks):
    if truth:
        return FileTruth(truth, samples, levels=fallbacks.truth_levels)
    in_file = all(samples.has_truth(v) for v in samples.variables)
    if not in_file and fallbacks.truth_files:
        return FileTruth(
            fallbacks.truth_files, samples, fallbacks.truth_dims, fallbacks.truth_levels
        )
    return InFileTruth(samples)


def _json_safe(value):
    """NaN / inf -> None (JSON has no NaN), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def evaluate(
    samples_path: str | Path,
    out_dir: str | Path,
    *,
    truth: Sequence[str] | None = None,
    variables: Sequence[str] | None = None,
    patch_grid: PatchGrid | None = None,
    fallbacks: Fallbacks | None = None,
    metrics_jsonl: str | Path | None = None,
    seed: int = 0,
    make_plots: bool = True,
    condition: Sequence[str] | None = None,
) -> dict:
    """Score the ensemble in ``samples_path`` against its truth and its baselines; write
    ``metrics.json`` and PNGs to ``out_dir``. The truth is ``truth`` (files), else
    ``<var>_truth`` in the samples file, else ``fallbacks.truth_files``; the patch grid is
    ``patch_grid``, else the samples file's attributes, else ``fallbacks.patch_grid`` (no seam
    score without one); the coarse condition of the interpolation baselines is ``condition``
    (files), else ``fallbacks.condition_files`` (no interpolation baseline without one)."""
    fallbacks = fallbacks or Fallbacks()
    out_dir = Path(out_dir)
    samples = SamplesFile(samples_path, variables)
    try:
        source = _truth(samples, truth, fallbacks)
        grid = patch_grid or _file_patch_grid(samples) or fallbacks.patch_grid
        lines = grid.lines(samples.shape) if grid is not None else None
        mean_grid = fallbacks.mean_grid
        if lines is not None and mean_grid is not None:
            more = mean_grid.lines(samples.shape)
            lines = (np.union1d(lines[0], more[0]), np.union1d(lines[1], more[1]))
        base = Baselines.open(samples, source, condition, fallbacks)
        phases = base.line_phases()
        out_dir.mkdir(parents=True, exist_ok=True)
        scores, maps = {}, []
        for c, name in enumerate(samples.variables):
            rng = np.random.default_rng([seed, c])
            acc = VariableScores(samples.members, lines, rng, phases)
            base_acc = {kind: VariableScores(1, None, np.random.default_rng([seed, c, k]), phases)
                        for k, kind in enumerate(base.kinds(name))}  # fmt: skip
            for t in range(samples.n_times):
                ens, y = samples.slab(name, t), source.read(name, t)  # (M, H, W), (H, W)
                acc.update(ens, y, samples.label(t))
                fields = base.fields(name, t)  # {kind: (H, W)}
                y_ens = np.where(np.isfinite(ens).all(0), y, np.nan)  # the ensemble's points
                for kind, guess in fields.items():
                    base_acc[kind].update(guess[None], y_ens, samples.label(t))
                if t == 0 and make_plots:
                    shown = base.shown(name, fields)
                    panels = plots.map_panels(ens, y, baseline=shown)
                    where = plots.map_coords(samples.ds, name, plots.map_step(y.shape))
                    maps.append(plots.plot_maps(out_dir / f"maps_{name}.png", name,
                                                samples.label(0), panels, where))  # fmt: skip
            scores[name] = _with_baselines(acc.result(), base_acc, base, name, samples.shape)
        result = {
            "samples": str(samples_path),
            "truth": source.description,
            "members": samples.members,
            "times": [samples.label(t) for t in range(samples.n_times)],
            "grid": list(samples.shape),
            "patch_grid": grid.as_dict() if grid is not None else None,
            "regression_mean_grid": mean_grid.as_dict() if mean_grid is not None else None,
            "seed": seed,
            "condition": base.description,
            "fine_band": _band(samples.shape, base),
            "definitions": DEFINITIONS,
            "scores": scores,
        }
    finally:
        samples.close()
    if make_plots:
        summary = _summary_plots(out_dir, scores, metrics_jsonl, result["fine_band"])
        result["plots"] = [str(p) for p in maps + summary]
    result = _json_safe(result)
    path = out_dir / "metrics.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    return {**result, "metrics_json": str(path)}


def _band(shape: tuple[int, int], base: Baselines) -> list[float] | None:
    return None if base.coarse_shape is None else list(fine_band(shape, base.coarse_shape))


def _with_baselines(scores: dict, accs: dict, base: Baselines, name: str, shape) -> dict:
    """``scores`` with the members' and ensemble mean's fine-scale power ratios and, per
    baseline, its RMSE, MAE, fine-scale power ratio, spectrum and the ensemble's skill."""
    band = _band(shape, base)

    def ratio(spectra: dict | None, key: str) -> float | None:
        return None if band is None else fine_power_ratio(spectra, band, key)

    spec = scores["spectra"]
    scores["fine_power_ratio"] = {
        "members": ratio(spec, "members"),
        "ensemble_mean": ratio(spec, "ensemble_mean"),
    }
    scores["reference_baseline"] = base.reference(name)
    scores["baselines"] = {}
    for kind, acc in accs.items():
        got = acc.result()
        scores["baselines"][kind] = {
            "rmse": got["rmse"], "mae": got["crps"], **skill(scores, got),
            "fine_power_ratio": ratio(got["spectra"], "members"),
            "coarse_imprint": got["coarse_imprint"],
            "spectrum": None if got["spectra"] is None else got["spectra"]["members"],
        }  # fmt: skip
    return scores


def _summary_plots(out_dir: Path, scores: dict, metrics_jsonl, band) -> list[Path]:
    paths = [
        plots.plot_spectra(out_dir / "spectra.png", scores, band),
        plots.plot_rank_histograms(out_dir / "rank_histograms.png", scores),
    ]
    if metrics_jsonl is not None and Path(metrics_jsonl).is_file():
        loss = plots.plot_loss_curves(out_dir / "loss_curves.png",
                                      plots.read_metrics(Path(metrics_jsonl)))  # fmt: skip
        paths += [loss] if loss is not None else []
    return paths


def evaluate_run(
    run_dir: str | Path,
    *,
    samples: str | Path | None = None,
    out_dir: str | Path | None = None,
    truth: Sequence[str] | None = None,
    variables: Sequence[str] | None = None,
    patch_grid: PatchGrid | None = None,
    seed: int = 0,
    make_plots: bool = True,
    condition: Sequence[str] | None = None,
) -> dict:
    """:func:`evaluate` for a run directory: its newest samples file, variables, truth files,
    condition files and patch grid from ``<run_dir>/config.yaml``, loss curves from
    ``metrics.jsonl``; output to ``<run_dir>/eval`` by default."""
    from hpcdiff.experiment.config import load_config

    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "config.yaml")
    grid = PatchGrid(tuple(cfg.data.patch_shape), cfg.sample.overlap_pix, cfg.sample.boundary_pix)
    mean = _mean_grid(run_dir, cfg)
    fallbacks = Fallbacks(
        list(cfg.data.files),
        dict(cfg.data.dims),
        grid,
        dict(cfg.data.levels),
        list(cfg.data.condition_files),
        list(cfg.data.condition_variables),
        mean if mean != grid else None,
    )
    return evaluate(
        samples if samples is not None else latest_samples(run_dir),
        out_dir if out_dir is not None else run_dir / "eval",
        truth=truth,
        variables=variables or list(cfg.data.variables),
        patch_grid=patch_grid,
        fallbacks=fallbacks,
        metrics_jsonl=run_dir / "metrics.jsonl",
        seed=seed,
        make_plots=make_plots,
        condition=condition,
    )


def _mean_grid(run_dir: Path, cfg) -> PatchGrid | None:
    """The patch grid a residual run fuses its regression mean on, from its
    ``residual_stats.json``; None for other runs."""
    if not cfg.objective.regression_run:
        return None
    from hpcdiff.experiment.residual import read_stats

    _, patching = read_stats(run_dir, cfg.sample)
    return PatchGrid(tuple(cfg.data.patch_shape), int(patching["overlap_pix"]),
                     int(patching["boundary_pix"]))  # fmt: skip
