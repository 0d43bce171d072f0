"""Skill scores of a generated ensemble against the truth, accumulated one time step at a time.

Notation: M members x_1..x_M, their mean xbar, the truth y; a point is valid where y and every
x_m are finite (masked truth points are excluded). Scores over all times pool every valid point
of every time step.

* RMSE of the ensemble mean: sqrt(mean (xbar - y)^2).
* CRPS: the fair ensemble CRPS (Zamo & Naveau 2018),
  E|X - y| - sum_{i,j} |x_i - x_j| / (2 M (M - 1)), via
  :func:`hpcdiff.diffusion.metrics.kcrps` with ``biased=False`` (for M = 1: |x - y|).
* Spread: sqrt(mean s^2) with s^2 the unbiased (ddof 1) ensemble variance. Spread-skill ratio
  sqrt((M + 1) / M) * spread / RMSE, which is 1 for a reliable ensemble (Fortin et al. 2014:
  E[(xbar - y)^2] = (M + 1) / M * E[s^2]).
* Rank histogram: counts of the truth's rank among the M + 1 values (M + 1 bins), a truth tied
  with k members taking one of its k + 1 possible ranks uniformly at random (seeded).
* Power spectra: :func:`hpcdiff.diffusion.metrics.power_spectrum` of truth, each member and the
  ensemble mean, averaged over members and times; invalid points are filled with the field's
  mean over valid points first.
* Seam score: with R(f) = mean d^2 on patch-boundary lines / mean d^2 off them, d the first
  differences of f across grid lines (both axes, both endpoints valid), the score is
  R(members) / R(truth): 1.0 means no seams, > 1 a visible patch grid. Lines are compared
  with lines of the same axis and, when the condition's grid is known, at the same position
  within a condition cell (:func:`cell_phases`): R is the mean of the ratio over these groups,
  weighted by the points on the group's patch lines. A downscaled field's gradients
  legitimately depend on where in a coarse cell they are (edges of an 8x block-mean condition
  are not its centres), and patch lines often fall at the same position in every cell (patch
  strides a multiple of the cell); comparing them with all lines would score that as seams.
* Coarse-cell imprint: q(c) = mean d^2 of the members / mean d^2 of the truth over the lines
  of position class c; the imprint is max q / min q (1 = members vary across a condition cell
  as the truth does; larger: the coarse grid shows through), the larger of the two axes.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from hpcdiff.diffusion.metrics import kcrps, power_spectrum

BLOCK = 2**20  # values (members x points) scored at once


def patch_lines(length: int, patch: int, overlap_pix: int, boundary_pix: int) -> np.ndarray:
    """Grid lines k (between pixels k - 1 and k, 0 < k < length) where a sampling patch starts
    or ends: patch i covers [i s - b, i s - b + p) with stride s = p - overlap_pix - b, as in
    :class:`~hpcdiff.diffusion.multi_diffusion.GridPatching2D`.

    >>> patch_lines(20, 8, 2, 0).tolist()
    [6, 8, 12, 14, 18]
    """
    stride = patch - overlap_pix - boundary_pix
    if stride < 1:
        raise ValueError(
            f"patch {patch} with overlap_pix {overlap_pix} and boundary_pix {boundary_pix} "
            "leaves no stride (patch - overlap_pix - boundary_pix must be >= 1)"
        )
    starts = np.arange(math.ceil(length / stride)) * stride - boundary_pix
    edges = np.concatenate([starts, starts + patch])
    return np.unique(edges[(edges > 0) & (edges < length)])


def cell_phases(pos: np.ndarray) -> np.ndarray:
    """Position class of each grid line k = 1..L-1 (between cells k - 1 and k) within the
    condition's cells, from ``pos`` (L,), the fractional coarse index of every target cell
    centre: the line lies at u = (pos[k - 1] + pos[k]) / 2, its phase frac(u + 1/2) is 0 on a
    coarse cell edge, and phases are binned into n = round(coarse / fine cell size) classes
    (class 0: the edges). For an integer ratio r on aligned grids the class is k mod r.

    >>> cell_phases((np.arange(12) + 0.5) / 4 - 0.5).tolist()
    [1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3]
    """
    pos = np.asarray(pos, dtype=np.float64)
    step = float(np.abs(np.diff(pos)).mean()) if pos.size > 1 else 0.0
    if not step > 0:  # fewer than two cells, or one coarse cell along the axis: one class
        return np.zeros(max(pos.size - 1, 0), dtype=np.int64)
    n = max(1, int(round(1.0 / step)))
    u = 0.5 * (pos[1:] + pos[:-1]) + 0.5
    return np.rint((u - np.floor(u)) * n).astype(np.int64) % n


def seam_sums(
    field: np.ndarray,
    valid: np.ndarray,
    lines_y: np.ndarray,
    lines_x: np.ndarray,
    phases: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Per position class (:func:`cell_phases` of the rows and of the columns; one class per
    axis without ``phases``): [sum, count] of squared first differences of ``field`` (H, W)
    across the grid lines in ``lines_y`` / ``lines_x``, then [sum, count] across all other
    lines. Shape (n_y + n_x, 4), the rows' classes first."""
    groups = []
    for axis, lines in ((0, lines_y), (1, lines_x)):
        d = np.diff(field, axis=axis).astype(np.float64)  # (H - 1, W) or (H, W - 1)
        ok = valid[1:] & valid[:-1] if axis == 0 else valid[:, 1:] & valid[:, :-1]
        with np.errstate(invalid="ignore", over="ignore"):
            sq = np.where(ok, d * d, 0.0)
        per_line, n_line = sq.sum(axis=1 - axis), ok.sum(axis=1 - axis)  # one per grid line
        on = np.zeros(per_line.shape[0], dtype=bool)
        on[np.asarray(lines, dtype=int) - 1] = True
        cls = np.zeros(per_line.shape[0], dtype=np.int64) if phases is None else phases[axis]
        for c in range(int(cls.max()) + 1 if cls.size else 1):
            a, b = on & (cls == c), ~on & (cls == c)
            groups.append([per_line[a].sum(), n_line[a].sum(), per_line[b].sum(), n_line[b].sum()])
    return np.asarray(groups, dtype=np.float64)


def _boundary_ratio(sums: np.ndarray) -> float:
    """R from :func:`seam_sums` totals (groups, 4): per group (mean d^2 on the lines) / (mean
    d^2 off them), averaged over the groups having both, weighted by their line points."""
    sums = np.atleast_2d(sums)
    on_sum, on_n, off_sum, off_n = sums.T
    use = (on_n > 0) & (off_n > 0) & (off_sum > 0)
    if not use.any():
        return math.nan
    ratio = (on_sum[use] / on_n[use]) / (off_sum[use] / off_n[use])
    return float((ratio * on_n[use]).sum() / on_n[use].sum())


def _imprint(members: np.ndarray, truth: np.ndarray, classes: tuple[int, int]) -> float:
    """max q / min q of the members' over the truth's mean d^2 per position class (see the
    module docstring), the larger over the two axes; NaN without classes to compare."""
    worst = math.nan
    groups = np.split(np.arange(sum(classes)), [classes[0]])
    for idx in groups:
        if len(idx) < 2:
            continue
        mean = [(s[idx, 0] + s[idx, 2]) / np.maximum(s[idx, 1] + s[idx, 3], 1)
                for s in (members, truth)]  # fmt: skip
        ok = (mean[1] > 0) & (mean[0] > 0)
        if ok.sum() < 2:
            continue
        q = mean[0][ok] / mean[1][ok]
        worst = float(np.nanmax([worst, q.max() / q.min()]))
    return worst


def rank_counts(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rank histogram counts (M + 1,) of the truth ``y`` (N,) among the members ``x`` (M, N),
    ties broken uniformly at random with ``rng``."""
    below = (x < y).sum(0)
    ties = (x == y).sum(0)
    rank = below + rng.integers(0, ties + 1)
    return np.bincount(rank, minlength=x.shape[0] + 1)


def _filled(field: np.ndarray, valid: np.ndarray, all_valid: bool) -> torch.Tensor:
    """``field`` with invalid points set to its mean over valid points, as a tensor."""
    if not all_valid:
        field = np.where(valid, field, field[valid].mean(dtype=np.float64)).astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(field))


class VariableScores:
    """Accumulates the scores of one variable over time steps (see the module docstring).

    Parameters
    ----------
    members : ensemble size M.
    lines : (lines_y, lines_x) of the sampling patch grid (:func:`patch_lines`), or None.
    rng : generator for the rank histogram's tie breaks.
    phases : (rows, cols) position classes of the grid lines in the condition's cells
        (:func:`cell_phases`), or None: the seam score then compares with all other lines
        and there is no coarse-cell imprint.
    """

    def __init__(
        self,
        members: int,
        lines: tuple[np.ndarray, np.ndarray] | None,
        rng: np.random.Generator,
        phases: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        self.M, self.lines, self.rng, self.phases = members, lines, rng, phases
        self.rows: list[dict] = []
        self.totals = np.zeros(5)  # n, squared error, variance, crps, non-finite generated
        self.ranks = np.zeros(members + 1, dtype=np.int64)
        self.spectra: np.ndarray | None = None  # (3, nbins): truth, members, ensemble mean
        self.wavenumber: np.ndarray | None = None
        self.n_spectra = 0
        n = (1, 1) if phases is None else tuple(int(p.max()) + 1 if p.size else 1 for p in phases)
        self.classes: tuple[int, int] = (n[0], n[1])
        self.seams = np.zeros((2, sum(n), 4))  # members, truth: seam_sums totals

    def update(self, ens: np.ndarray, truth: np.ndarray, label: str) -> None:
        """Add one time step: ``ens`` (M, H, W) and ``truth`` (H, W), physical units."""
        finite = np.isfinite(ens).all(0)
        valid = np.isfinite(truth) & finite
        bad = int((np.isfinite(truth) & ~finite).sum())
        n = int(valid.sum())
        if n == 0:
            self.totals[4] += bad
            self.rows.append(_row(label, 0, math.nan, math.nan, math.nan, self.M))
            return
        all_valid = n == valid.size
        x = ens.reshape(self.M, -1) if all_valid else ens[:, valid]  # (M, N)
        y = truth.reshape(-1) if all_valid else truth[valid]  # (N,)
        se, var, crps = self._point_sums(x, y)
        self.totals += [n, se, var, crps, bad]
        self.rows.append(_row(label, n, se, var, crps, self.M))
        self._add_spectra(ens, truth, valid, all_valid)
        if self.lines is not None or self.phases is not None:
            lines = self.lines if self.lines is not None else (np.zeros(0, int),) * 2
            self.seams[1] += seam_sums(truth, valid, *lines, self.phases)
            for member in ens:
                self.seams[0] += seam_sums(member, valid, *lines, self.phases)

    def _point_sums(self, x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
        """Sums over points of (xbar - y)^2, s^2 and CRPS; adds the ranks. Works on blocks of
        about :data:`BLOCK` values so temporaries (sorts, float64 copies) stay small."""
        se = var = crps = 0.0
        step = max(1, BLOCK // self.M)
        for start in range(0, y.shape[0], step):
            xs, ys = x[:, start : start + step], y[start : start + step]  # (M, n), (n,)
            xbar = xs.mean(0, dtype=np.float64)
            se += float(((xbar - ys) ** 2).sum())
            if self.M > 1:
                var += sum(float(((m - xbar) ** 2).sum()) for m in xs) / (self.M - 1)
            block = kcrps(torch.from_numpy(xs), torch.from_numpy(ys), dim=0, biased=self.M == 1)
            crps += float(block.sum(dtype=torch.float64))
            self.ranks += rank_counts(xs, ys, self.rng)
        return se, var if self.M > 1 else math.nan, crps

    def _add_spectra(self, ens, truth, valid, all_valid) -> None:
        if min(truth.shape) < 4:  # power_spectrum needs min(H, W) // 2 - 1 >= 1 bins
            return
        k, p_truth = power_spectrum(_filled(truth, valid, all_valid))
        p_members = sum(power_spectrum(_filled(m, valid, all_valid))[1] for m in ens) / self.M
        _, p_mean = power_spectrum(_filled(ens.mean(0), valid, all_valid))
        step = torch.stack([p_truth, p_members, p_mean]).double().numpy()  # (3, nbins)
        self.spectra = step if self.spectra is None else self.spectra + step
        self.wavenumber, self.n_spectra = k.double().numpy(), self.n_spectra + 1

    def result(self) -> dict:
        """Scores over all time steps, per-time rows, rank counts, spectra and seam score."""
        n, se, var, crps, bad = map(float, self.totals)
        out = _row(None, int(n), se, var, crps, self.M)
        del out["time"]
        out["nonfinite_generated"] = int(bad)
        out["per_time"] = self.rows
        out["rank_histogram"] = self.ranks.tolist()
        out["spectra"] = None
        if self.spectra is not None:
            mean = self.spectra / self.n_spectra
            out["spectra"] = {
                "wavenumber": self.wavenumber.tolist(),
                "truth": mean[0].tolist(),
                "members": mean[1].tolist(),
                "ensemble_mean": mean[2].tolist(),
            }
        out["seam"] = None
        if self.lines is not None:
            r_gen, r_truth = _boundary_ratio(self.seams[0]), _boundary_ratio(self.seams[1])
            out["seam"] = {
                "score": r_gen / r_truth if r_truth > 0 else math.nan,
                "ratio_generated": r_gen,
                "ratio_truth": r_truth,
                "lines_y": len(self.lines[0]),
                "lines_x": len(self.lines[1]),
                "position_classes": list(self.classes) if self.phases is not None else None,
            }
        out["coarse_imprint"] = None
        if self.phases is not None:
            out["coarse_imprint"] = _imprint(self.seams[0], self.seams[1], self.classes)
        return out


def _row(label: str | None, n: int, se: float, var: float, crps: float, M: int) -> dict:
    """RMSE, CRPS, spread and spread-skill ratio from pooled sums over ``n`` valid points."""
    if n == 0:
        return {"time": label, "n_valid": 0, "rmse": math.nan, "crps": math.nan,
                "spread": math.nan, "spread_skill": math.nan}  # fmt: skip
    rmse, spread = math.sqrt(se / n), math.sqrt(var / n) if M > 1 else math.nan
    ssr = math.sqrt((M + 1) / M) * spread / rmse if rmse > 0 else math.nan
    return {"time": label, "n_valid": n, "rmse": rmse, "crps": crps / n, "spread": spread,
            "spread_skill": ssr}  # fmt: skip


def fine_band(shape: tuple[int, int], coarse_shape: tuple[int, int]) -> tuple[float, float]:
    """Wavenumbers (cycles per domain) the truth resolves and the condition does not:
    (min(h, w) / 2, min(H, W) / 2], the coarse grid's and the target grid's Nyquist."""
    return min(coarse_shape) / 2, min(shape) / 2


def fine_power_ratio(spectra: dict | None, band: tuple[float, float], key: str) -> float:
    """sum P_key(k) / sum P_truth(k) over the bins with centre k in ``band`` (lo, hi]."""
    if spectra is None:
        return math.nan
    k = np.asarray(spectra["wavenumber"])
    inside = (k > band[0]) & (k <= band[1])
    truth = float(np.sum(np.asarray(spectra["truth"])[inside]))
    if not inside.any() or truth <= 0:
        return math.nan
    return float(np.sum(np.asarray(spectra[key])[inside])) / truth


def skill(model: dict, base: dict) -> dict:
    """Skill of the ensemble (``model``: :meth:`VariableScores.result`) against a
    deterministic baseline scored as a one-member ensemble (its CRPS is its MAE):
    1 - CRPS / MAE_base and 1 - RMSE / RMSE_base (> 0: better than the baseline)."""

    def one_minus(a: float, b: float) -> float:
        return 1.0 - a / b if b > 0 and math.isfinite(a) else math.nan

    return {"crps_skill": one_minus(model["crps"], base["crps"]),
            "rmse_skill": one_minus(model["rmse"], base["rmse"])}  # fmt: skip
