"""Scores of hpcdiff.evaluate against closed forms and hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hpcdiff.diffusion.multi_diffusion import GridPatching2D
from hpcdiff.evaluate import VariableScores, cell_phases, patch_lines, rank_counts, seam_sums
from hpcdiff.evaluate.baselines import fractional_index, index_positions


def _scores(ens, truth, lines=None, seed=0, phases=None) -> dict:
    """All-time result of VariableScores fed time steps ens (T, M, H, W), truth (T, H, W)."""
    acc = VariableScores(ens.shape[1], lines, np.random.default_rng(seed), phases)
    for t in range(ens.shape[0]):
        acc.update(ens[t].astype(np.float32), truth[t].astype(np.float32), str(t))
    return acc.result()


def _gaussian(T=3, M=4, H=40, W=50, member_std=1.0, seed=0):
    rng = np.random.default_rng(seed)
    truth = rng.normal(size=(T, H, W))
    ens = rng.normal(scale=member_std, size=(T, M, H, W))
    return ens, truth


def test_perfect_ensemble_scores_zero_and_ties_give_flat_ranks():
    truth = np.random.default_rng(0).normal(size=(2, 30, 40))
    ens = np.repeat(truth[:, None], 4, axis=1)  # every member equals the truth
    s = _scores(ens, truth)
    assert s["rmse"] == 0.0 and s["spread"] == 0.0
    assert s["crps"] == pytest.approx(0.0, abs=1e-7)  # float32 kernel sums
    assert s["n_valid"] == 2 * 30 * 40 and sum(s["rank_histogram"]) == 2 * 30 * 40
    # all M members tie with the truth: its rank is uniform on {0..M}
    expected = 2 * 30 * 40 / 5
    assert np.abs(np.array(s["rank_histogram"]) - expected).max() < 0.1 * expected


@pytest.mark.parametrize("offset", [0.75, -2.0])
def test_constant_offset_ensemble(offset):
    truth = np.random.default_rng(1).normal(size=(2, 16, 24))
    ens = np.repeat(truth[:, None], 3, axis=1) + offset
    s = _scores(ens, truth)
    assert s["rmse"] == pytest.approx(abs(offset), rel=1e-6)
    assert s["crps"] == pytest.approx(abs(offset), rel=1e-6)  # no spread: CRPS = |x - y|
    assert s["spread"] == pytest.approx(0.0, abs=1e-6)
    # the truth lies outside every member: all ranks land in one end bin
    end = 0 if offset > 0 else 3
    assert s["rank_histogram"][end] == truth.size
    assert all(row["rmse"] == pytest.approx(abs(offset), rel=1e-6) for row in s["per_time"])


def test_fair_crps_by_hand():
    # members (0, 1, 3), truth 2: E|X - y| = 4/3, sum_{i,j}|x_i - x_j| = 12, / (2 * 3 * 2) = 1
    ens = np.array([0.0, 1.0, 3.0]).reshape(1, 3, 1, 1)
    truth = np.full((1, 1, 1), 2.0)
    assert _scores(ens, truth)["crps"] == pytest.approx(1.0 / 3.0, rel=1e-6)
    # members (0, 2), truth 1: 1 - 4 / (2 * 2 * 1) = 0 (the biased estimator would give 0.5)
    ens = np.array([0.0, 2.0]).reshape(1, 2, 1, 1)
    assert _scores(ens, np.ones((1, 1, 1)))["crps"] == pytest.approx(0.0, abs=1e-7)


def test_single_member_crps_is_absolute_error_and_spread_undefined():
    truth = np.zeros((1, 2, 2))
    ens = np.array([1.0, -3.0, 2.0, 0.0]).reshape(1, 1, 2, 2)
    s = _scores(ens, truth)
    assert s["crps"] == pytest.approx(1.5)
    assert s["rmse"] == pytest.approx(math.sqrt(14 / 4))
    assert math.isnan(s["spread"]) and math.isnan(s["spread_skill"])


def test_gaussian_ensemble_from_the_truths_distribution():
    M = 4
    ens, truth = _gaussian(M=M)
    s = _scores(ens, truth)
    # E|X - Y| - E|X - X'| / 2 = 2 / sqrt(pi) - 1 / sqrt(pi) for independent N(0, 1)
    assert s["crps"] == pytest.approx(1 / math.sqrt(math.pi), rel=0.03)
    assert s["rmse"] == pytest.approx(math.sqrt(1 + 1 / M), rel=0.03)
    assert s["spread"] == pytest.approx(1.0, rel=0.03)
    assert s["spread_skill"] == pytest.approx(1.0, abs=0.04)
    counts = np.array(s["rank_histogram"])
    expected = counts.sum() / (M + 1)
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 20.0  # 4 degrees of freedom: P(chi2 > 20) < 1e-3


def test_under_dispersive_ensemble_spread_skill_closed_form():
    M, a = 4, 0.5  # members N(0, a^2), truth N(0, 1)
    ens, truth = _gaussian(M=M, member_std=a, seed=3)
    expected = math.sqrt((M + 1) / M) * a / math.sqrt(1 + a * a / M)
    s = _scores(ens, truth)
    assert s["spread_skill"] == pytest.approx(expected, rel=0.04)
    counts = np.array(s["rank_histogram"])  # U-shaped: the ends hold too much
    assert counts[0] > 1.5 * counts[2] and counts[-1] > 1.5 * counts[2]


def test_masked_truth_points_are_excluded_and_bad_members_counted():
    ens, truth = _gaussian(T=1, M=3, H=12, W=10, seed=4)
    truth[0, :3, :] = np.nan  # masked truth
    ens[0, 1, 5, 5] = np.inf  # a broken generated value where the truth is valid
    s = _scores(ens, truth)
    valid = np.isfinite(truth[0]) & np.isfinite(ens[0]).all(0)
    x, y = ens[0][:, valid], truth[0][valid]
    assert s["n_valid"] == valid.sum() == 12 * 10 - 30 - 1
    assert s["nonfinite_generated"] == 1
    assert s["rmse"] == pytest.approx(math.sqrt(((x.mean(0) - y) ** 2).mean()), rel=1e-6)
    assert sum(s["rank_histogram"]) == valid.sum()
    assert all(math.isfinite(v) for v in s["spectra"]["truth"])


def test_rank_counts_ends_and_seeded_tie_breaks():
    x = np.array([[0.0, 1.0, 5.0], [2.0, 3.0, 5.0]])  # (M=2, N=3)
    y = np.array([-1.0, 9.0, 5.0])
    counts = rank_counts(x, y, np.random.default_rng(0))
    assert counts[0] >= 1 and counts[2] >= 1 and counts.sum() == 3
    ties = np.zeros((2, 3000))
    a = rank_counts(ties, np.zeros(3000), np.random.default_rng(7))
    b = rank_counts(ties, np.zeros(3000), np.random.default_rng(7))
    assert a.tolist() == b.tolist() and np.abs(a - 1000).max() < 100


def test_power_spectrum_of_a_sine_peaks_at_its_wavenumber():
    H = W = 64
    k0 = 6
    x = np.arange(W)
    field = np.tile(np.sin(2 * np.pi * k0 * x / W), (H, 1))[None]  # (T=1, H, W)
    s = _scores(np.repeat(field[:, None], 2, axis=1), field)
    k = np.array(s["spectra"]["wavenumber"])
    for key in ("truth", "members", "ensemble_mean"):
        peak = int(np.argmax(s["spectra"][key]))
        assert abs(k[peak] - k0) <= (k[1] - k[0]) / 2
    assert s["spectra"]["members"] == pytest.approx(s["spectra"]["truth"], rel=1e-5)


@pytest.mark.parametrize(
    "length,patch,overlap,boundary", [(37, 12, 3, 2), (29, 10, 0, 0), (40, 16, 4, 1)]
)
def test_patch_lines_are_where_grid_patching_fuse_changes(length, patch, overlap, boundary):
    """Fuse patches filled with their own row index: the fused image steps exactly on the
    lines where a patch starts or ends."""
    patching = GridPatching2D((length, 8), (patch, 8), overlap_pix=overlap, boundary_pix=boundary)
    patches = patching.apply(torch.zeros(1, 1, length, 8))  # (P, 1, Hp, Wp)
    ny = math.ceil(length / (patch - overlap - boundary))
    index = torch.arange(patches.shape[0], dtype=torch.float64) % ny  # patch p: row p % ny
    fused = patching.fuse(index.view(-1, 1, 1, 1).expand_as(patches).clone(), batch_size=1)
    column = fused[0, 0, :, 0].numpy()
    steps = np.flatnonzero(np.abs(np.diff(column)) > 1e-9) + 1
    assert patch_lines(length, patch, overlap, boundary).tolist() == steps.tolist()


def test_patch_lines_reject_a_patch_without_stride():
    with pytest.raises(ValueError, match="overlap_pix 8"):
        patch_lines(64, 8, 8, 0)


def test_seam_score_closed_form_ramp_with_steps_on_the_lines():
    """Truth y + x has squared differences 1 everywhere (R = 1); members with an extra unit
    step on every patch line have 4 there and 1 elsewhere: R = 4, score 4."""
    H, W = 40, 36
    lines = patch_lines(H, 12, 4, 0), patch_lines(W, 12, 4, 0)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    truth = yy + xx
    steps = np.searchsorted(lines[0], yy, side="right") + np.searchsorted(lines[1], xx, "right")
    ens = np.stack([truth + steps, truth + steps + 0.5])[None]  # (T=1, M=2, H, W)
    seam = _scores(ens, truth[None], lines)["seam"]
    assert seam["ratio_truth"] == pytest.approx(1.0)
    assert seam["ratio_generated"] == pytest.approx(4.0)
    assert seam["score"] == pytest.approx(4.0)
    assert (seam["lines_y"], seam["lines_x"]) == (len(lines[0]), len(lines[1]))


def _smooth(rng, n, H, W, width=3.0):
    """n stationary smooth random fields (n, H, W): white noise low-passed by a Gaussian."""
    ky, kx = np.fft.fftfreq(H)[:, None], np.fft.fftfreq(W)[None, :]
    gain = np.exp(-2 * (np.pi * width) ** 2 * (ky**2 + kx**2))
    noise = np.fft.fft2(rng.normal(size=(n, H, W)))
    return np.fft.ifft2(noise * gain).real


def test_seam_score_smooth_fields_near_one_and_injected_jumps_above_one():
    rng = np.random.default_rng(5)
    H = W = 96
    lines = patch_lines(H, 16, 4, 0), patch_lines(W, 16, 4, 0)
    truth = _smooth(rng, 2, H, W)  # (T, H, W)
    ens = _smooth(rng, 8, H, W).reshape(2, 4, H, W)  # other realizations of the same field
    smooth = _scores(ens, truth, lines)["seam"]["score"]
    assert smooth == pytest.approx(1.0, abs=0.2)
    # a jump of +-2 rms differences across every patch line (piecewise constant offsets)
    scale = 2 * np.sqrt((np.diff(truth, axis=-1) ** 2).mean())
    jump_y = np.zeros(H)
    jump_y[lines[0]] = rng.choice([-scale, scale], size=len(lines[0]))
    jump_x = np.zeros(W)
    jump_x[lines[1]] = rng.choice([-scale, scale], size=len(lines[1]))
    offsets = np.cumsum(jump_y)[:, None] + np.cumsum(jump_x)[None, :]  # (H, W)
    seamy = _scores(ens + offsets, truth, lines)["seam"]["score"]
    assert seamy > 3.0


def test_seam_sums_exclude_differences_touching_masked_points():
    field = np.arange(16.0).reshape(4, 4) ** 2
    valid = np.ones((4, 4), dtype=bool)
    valid[1, 2] = False
    lines = np.array([2]), np.array([2])
    sums = seam_sums(field, valid, *lines)  # one group per axis without phases
    assert sums.shape == (2, 4)
    sums = sums.sum(0)
    # differences: 2 x 12; 4 touch (1, 2) -> 20 remain; 3 + 3 of them on the lines 2
    assert sums[1] + sums[3] == 20 and sums[1] == 6
    dy, dx = np.diff(field, axis=0), np.diff(field, axis=1)
    ok_y = valid[1:] & valid[:-1]
    ok_x = valid[:, 1:] & valid[:, :-1]
    on = (dy[1][ok_y[1]] ** 2).sum() + (dx[:, 1][ok_x[:, 1]] ** 2).sum()
    assert sums[0] == pytest.approx(on)


def test_cell_phases_of_aligned_offset_and_non_integer_grids():
    # 8 fine cells per coarse cell, aligned (index space): line k sits at k mod 8 in a cell
    assert cell_phases(index_positions((64,), (8,))[0]).tolist() == [k % 8 for k in range(1, 64)]
    # the fine grid starting 3 fine cells into a coarse cell (coordinates): (k + 3) mod 8
    fine = np.arange(40) + 3.5  # fine centres in units of fine cells
    coarse = np.arange(8) * 8 + 4.0  # coarse centres, cells [8 j, 8 j + 8)
    assert cell_phases(fractional_index(fine, coarse)).tolist() == [
        (k + 3) % 8 for k in range(1, 40)
    ]
    # both axes descending (latitudes north to south): line k lies at coordinate 43 - k,
    # counted from the edges in the coarse grid's own (descending) order
    flipped = fractional_index(fine[::-1], coarse[::-1])
    assert cell_phases(flipped).tolist() == [(k - 43) % 8 for k in range(1, 40)]
    # 2.5 fine cells per coarse cell: 2 or 3 classes are a binning, every line gets one
    pos = index_positions((25,), (10,))[0]
    got = cell_phases(pos)
    assert got.shape == (24,) and set(got.tolist()) <= {0, 1} and got[4] == 0  # line 5: an edge
    # one coarse cell along the axis (positions all 0): a single class, no division by zero
    assert cell_phases(fractional_index(fine, np.array([20.0]))).tolist() == [0] * 39


def _imprinted(rng, T, M, H, W, r, gain):
    """Smooth random fields plus a field constant on r x r blocks (the cells of an r times
    coarser grid): squared differences across the blocks' edges are ``gain`` times those
    across other lines on average, a coarse-grid imprint without patch seams."""
    f = _smooth(rng, T * M, H, W, width=2.0).reshape(T, M, H, W)
    d2 = (np.diff(f, axis=-1) ** 2).mean()
    blocks = rng.normal(scale=np.sqrt((gain - 1) * d2 / 2), size=(T, M, H // r, W // r))
    return f + np.kron(blocks, np.ones((r, r)))


def test_seam_score_does_not_count_a_coarse_cell_imprint_as_seams():
    """Patch lines (patch 32, overlap 8: all multiples of 8) on the edges of 8-cell coarse
    cells: members with steeper differences across every coarse edge (an imprint, no seams)
    score as seams when compared with all lines, and not when compared with lines at the same
    position in a cell; a real step on the patch lines still scores as one, and the imprint
    score shows the imprint."""
    rng = np.random.default_rng(11)
    H = W = 128
    lines = patch_lines(H, 32, 8, 0), patch_lines(W, 32, 8, 0)
    assert all(int(k) % 8 == 0 for k in lines[0])
    phases = (cell_phases(index_positions((H,), (16,))[0]),) * 2
    truth = _smooth(rng, 4, H, W, width=2.0)
    clean = _smooth(rng, 16, H, W, width=2.0).reshape(4, 4, H, W)
    printed = _imprinted(rng, 4, 4, H, W, r=8, gain=2.0)
    unmatched = _scores(printed, truth, lines)
    matched = _scores(printed, truth, lines, phases=phases)
    assert unmatched["seam"]["score"] > 1.5  # the imprint, read as seams
    assert matched["seam"]["score"] == pytest.approx(1.0, abs=0.1)
    assert matched["seam"]["position_classes"] == [8, 8]
    assert matched["coarse_imprint"] == pytest.approx(2.0, rel=0.15)  # the edges' class
    assert unmatched["coarse_imprint"] is None
    ok = _scores(clean, truth, lines, phases=phases)
    assert ok["seam"]["score"] == pytest.approx(1.0, abs=0.1)
    assert ok["coarse_imprint"] < 1.3
    scale = 2 * np.sqrt((np.diff(truth, axis=-1) ** 2).mean())
    jumps = [np.zeros(n) for n in (H, W)]
    for j, ln in zip(jumps, lines):
        j[ln] = rng.choice([-scale, scale], size=len(ln))
    offsets = np.cumsum(jumps[0])[:, None] + np.cumsum(jumps[1])[None, :]
    assert _scores(clean + offsets, truth, lines, phases=phases)["seam"]["score"] > 3.0


def test_scores_do_not_depend_on_the_block_size(monkeypatch):
    from hpcdiff.evaluate import scores

    ens, truth = _gaussian(T=2, M=3, H=9, W=11, seed=6)
    truth[0, 0, :4] = np.nan
    whole = _scores(ens, truth)
    monkeypatch.setattr(scores, "BLOCK", 7)  # blocks of 2 points
    blocked = _scores(ens, truth)
    for key in ("rmse", "crps", "spread", "spread_skill", "n_valid", "rank_histogram"):
        assert blocked[key] == pytest.approx(whole[key], rel=1e-12)
