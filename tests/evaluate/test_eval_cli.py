"""``hpcdiff evaluate`` end to end on tiny NetCDF files written here: run directories, files from
elsewhere with a separate truth, plots, and the errors users meet."""

from __future__ import annotations

import json
import math
from pathlib import Path

import netCDF4
import numpy as np
import pytest
import yaml
from matplotlib.image import imread

from hpcdiff.cli import main
from hpcdiff.evaluate import patch_lines

VARS = ["a", "b"]
M, T, H, W = 3, 2, 24, 20
EPOCH_2020 = 1577836800.0  # 2020-01-01T00:00 in seconds since 1970
HOURS = [1, 3]  # sample times, hours after 2020-01-01T00:00


def _fields(seed: int = 0):
    """Members (M, T, C, H, W) and truth (T, C, H, W) with a masked corner."""
    rng = np.random.default_rng(seed)
    truth = rng.normal(size=(T, len(VARS), H, W)).astype(np.float32)
    truth[:, :, :2, :3] = np.nan
    ens = (truth + rng.normal(scale=0.5, size=(M, *truth.shape))).astype(np.float32)
    return np.nan_to_num(ens), truth


def _write_truth_file(path: Path, truth: np.ndarray, shape=(H, W), drop_hour=None) -> Path:
    """CF truth file: hourly times 0..4 (hours since 2020-01-01), fill value for NaN."""
    hours = [h for h in range(5) if h != drop_hour]
    with netCDF4.Dataset(path, "w") as nc:
        nc.createDimension("time", None)
        nc.createDimension("lat", shape[0])
        nc.createDimension("lon", shape[1])
        t = nc.createVariable("time", "f8", ("time",))
        t.units, t.calendar = "hours since 2020-01-01 00:00:00", "standard"
        t[:] = hours
        for c, name in enumerate(VARS):
            v = nc.createVariable(name, "f4", ("time", "lat", "lon"), fill_value=-999.0)
            data = np.zeros((len(hours), *shape), dtype=np.float32)
            for i, h in enumerate(hours):
                if h in HOURS and shape == (H, W):
                    data[i] = np.nan_to_num(truth[HOURS.index(h), c], nan=-999.0)
            v[:] = data
    return path


def _write_samples(path: Path, ens, truth, with_truth: bool = True) -> Path:
    """The layout ``hpcdiff sample`` writes: ``v`` (member, time, y, x) with the input's
    dimension names, a ``realization`` member coordinate, and ``v_truth`` (time, y, x)."""
    with netCDF4.Dataset(path, "w") as nc:
        for name, size in (("member", M), ("time", T), ("lat", H), ("lon", W)):
            nc.createDimension(name, size)
        member = nc.createVariable("member", "i4", ("member",))
        member.standard_name = "realization"
        member[:] = np.arange(M)
        t = nc.createVariable("time", "f8", ("time",))
        t.units, t.calendar = "seconds since 1970-01-01 00:00:00", "standard"
        t[:] = EPOCH_2020 + 3600.0 * np.array(HOURS)
        for c, name in enumerate(VARS):
            v = nc.createVariable(name, "f4", ("member", "time", "lat", "lon"),
                                  chunksizes=(1, 1, 16, 16))  # fmt: skip
            v[:] = ens[:, :, c]
            if with_truth:
                tv = nc.createVariable(f"{name}_truth", "f4", ("time", "lat", "lon"),
                                       fill_value=np.float32(np.nan))  # fmt: skip
                tv[:] = truth[:, c]
    return path


def _make_run(tmp_path: Path, with_truth: bool = True) -> Path:
    ens, truth = _fields()
    run = tmp_path / "run"
    (run / "samples").mkdir(parents=True)
    truth_file = _write_truth_file(tmp_path / "truth.nc", truth)
    cfg = {"data": {"files": [str(truth_file)], "variables": VARS, "patch_shape": [12, 12]},
           "sample": {"overlap_pix": 4, "boundary_pix": 0}}  # fmt: skip
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    rows = [{"step": s, "loss": 2.0 / s, "loss_per_channel": {"a": 1.9 / s, "b": 2.1 / s}}
            for s in range(1, 11)]  # fmt: skip
    rows += [{"step": 5, "val_loss": 0.5}, {"step": 10, "val_loss": 0.3}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    _write_samples(run / "samples" / "samples.nc", ens, truth, with_truth)
    return run


def _expected_rmse(c: int) -> float:
    ens, truth = _fields()
    err = ens[:, :, c].mean(0, dtype=np.float64) - truth[:, c]
    return math.sqrt(np.nanmean(err**2))


def _assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 5000, path
    pixels = imread(path)[..., :3]  # (h, w, 3)
    assert pixels.shape[0] > 200 and pixels.shape[1] > 200
    assert pixels.std() > 0.02 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50


def test_run_directory_end_to_end(tmp_path, capsys):
    run = _make_run(tmp_path)
    assert main(["evaluate", str(run)]) == 0
    out = capsys.readouterr().out
    assert "rmse" in out and str(run / "eval" / "metrics.json") in out
    result = json.loads((run / "eval" / "metrics.json").read_text())
    assert result["members"] == M and result["times"] == ["2020-01-01T01:00:00",
                                                          "2020-01-01T03:00:00"]  # fmt: skip
    assert result["truth"] == "in the samples file"
    for c, name in enumerate(VARS):
        s = result["scores"][name]
        assert s["rmse"] == pytest.approx(_expected_rmse(c), rel=1e-5)
        # members = truth + N(0, 0.5^2): sqrt((M + 1) / M) * 0.5 / sqrt(0.25 / M) = 2
        assert s["spread_skill"] == pytest.approx(2.0, rel=0.1)
        assert s["n_valid"] == T * (H * W - 6) == sum(s["rank_histogram"])
        assert len(s["per_time"]) == T and len(s["rank_histogram"]) == M + 1
        assert s["seam"]["lines_y"] == len(patch_lines(H, 12, 4, 0))
        assert s["seam"]["lines_x"] == len(patch_lines(W, 12, 4, 0))
    names = ["maps_a.png", "maps_b.png", "spectra.png", "rank_histograms.png", "loss_curves.png"]
    assert sorted(Path(p).name for p in result["plots"]) == sorted(names)
    for name in names:
        _assert_png(run / "eval" / name)


def test_separate_truth_files_give_the_in_file_scores(tmp_path):
    """--truth FILE (matched by time, other units and dim names) and the run's data.files
    (samples without <var>_truth) both reproduce the scores of the truth in the samples file."""
    run = _make_run(tmp_path)
    assert main(["evaluate", str(run), "--no-plots"]) == 0
    in_file = json.loads((run / "eval" / "metrics.json").read_text())["scores"]
    samples = run / "samples" / "samples.nc"
    out = tmp_path / "ext"
    argv = ["evaluate", "--samples", str(samples), "--truth", str(tmp_path / "truth.nc"),
            "--variables", "b", "--out", str(out), "--no-plots"]  # fmt: skip
    assert main(argv) == 0
    external = json.loads((out / "metrics.json").read_text())
    assert list(external["scores"]) == ["b"] and external["patch_grid"] is None
    assert external["scores"]["b"]["seam"] is None
    no_truth = _make_run(tmp_path / "bare", with_truth=False)
    assert main(["evaluate", str(no_truth), "--no-plots"]) == 0
    fallback = json.loads((no_truth / "eval" / "metrics.json").read_text())
    assert fallback["truth"] == str(tmp_path / "bare" / "truth.nc")
    for got, names in ((external["scores"], ["b"]), (fallback["scores"], VARS)):
        for name in names:
            for key in ("rmse", "crps", "spread_skill", "rank_histogram"):
                assert got[name][key] == pytest.approx(in_file[name][key], rel=1e-6)


def _bad_grid(tmp_path, run):
    _write_truth_file(tmp_path / "small.nc", None, shape=(H - 1, W))
    return ["--truth", str(tmp_path / "small.nc")], [str(tmp_path / "small.nc"), "'a'", "grid"]


def _missing_time(tmp_path, run):
    _write_truth_file(tmp_path / "gap.nc", _fields()[1], drop_hour=3)
    return ["--truth", str(tmp_path / "gap.nc")], [str(tmp_path / "gap.nc"), "2020-01-01T03"]


def _missing_variable(tmp_path, run):
    samples = str(run / "samples" / "samples.nc")
    return ["--variables", "a", "zz"], [samples, "'zz'", "missing"]


def _no_member_dim(tmp_path, run):
    samples = str(run / "samples" / "samples.nc")
    return ["--variables", "a_truth"], [samples, "'a_truth'", "member"]


@pytest.mark.parametrize("case", [_bad_grid, _missing_time, _missing_variable, _no_member_dim])
def test_bad_input_exits_2_naming_file_and_variable(tmp_path, capsys, case):
    run = _make_run(tmp_path)
    extra, needles = case(tmp_path, run)
    assert main(["evaluate", str(run), "--no-plots", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hpcdiff evaluate: error: ")
    for needle in needles:
        assert needle in err


def test_usage_errors(tmp_path, capsys):
    assert main(["evaluate"]) == 2
    assert "RUN_DIR or --samples" in capsys.readouterr().err
    assert main(["evaluate", "--samples", "x.nc", "--overlap-pix", "4"]) == 2
    assert "need --patch-shape" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["evaluate", str(tmp_path / "empty")]) == 2
    assert "config file not found" in capsys.readouterr().err
    run = _make_run(tmp_path)
    (run / "samples" / "samples.nc").unlink()
    assert main(["evaluate", str(run)]) == 2
    assert "hpcdiff sample" in capsys.readouterr().err


def test_patch_grid_precedence_option_then_file_attributes_then_run_config(tmp_path):
    run = _make_run(tmp_path)  # run config: patch 12, overlap 4
    with netCDF4.Dataset(run / "samples" / "samples.nc", "a") as nc:
        nc.patch_shape, nc.overlap_pix, nc.boundary_pix = np.array([8, 10]), 2, 1

    def lines(argv):
        assert main(["evaluate", str(run), "--no-plots", *argv]) == 0
        result = json.loads((run / "eval" / "metrics.json").read_text())
        seam = result["scores"]["a"]["seam"]
        return result["patch_grid"], (seam["lines_y"], seam["lines_x"])

    grid, counts = lines([])
    assert grid == {"patch_shape": [8, 10], "overlap_pix": 2, "boundary_pix": 1}
    assert counts == (len(patch_lines(H, 8, 2, 1)), len(patch_lines(W, 10, 2, 1)))
    grid, counts = lines(["--patch-shape", "6", "5"])
    assert grid == {"patch_shape": [6, 5], "overlap_pix": 0, "boundary_pix": 0}
    assert counts == (len(patch_lines(H, 6, 0, 0)), len(patch_lines(W, 5, 0, 0)))


F = 4  # coarsening factor of the condition written by _write_condition: (H / F, W / F)


def _write_condition(path: Path, seed: int = 1) -> np.ndarray:
    """A coarse condition file like the truth file (hourly times 0..4, no coordinates);
    returns its values (5, C, H / F, W / F)."""
    coarse = np.random.default_rng(seed).normal(size=(5, len(VARS), H // F, W // F))
    coarse = coarse.astype(np.float32)
    with netCDF4.Dataset(path, "w") as nc:
        for name, size in (("time", None), ("lat", H // F), ("lon", W // F)):
            nc.createDimension(name, size)
        t = nc.createVariable("time", "f8", ("time",))
        t.units, t.calendar = "hours since 2020-01-01 00:00:00", "standard"
        t[:] = np.arange(5)
        for c, name in enumerate(VARS):
            nc.createVariable(name, "f4", ("time", "lat", "lon"))[:] = coarse[:, c]
    return coarse


def _numpy_bicubic(coarse: np.ndarray) -> np.ndarray:
    """Keys (a = -0.5) cubic convolution, point by point, edge cells replicated."""

    def kernel(s):
        s = abs(s)
        return 1.5 * s**3 - 2.5 * s**2 + 1 if s <= 1 else (-0.5 * s**3 + 2.5 * s**2 - 4 * s + 2
                                                            if s < 2 else 0.0)  # fmt: skip

    def axis(n_fine, n):  # (n_fine, n) weights along one axis
        out = np.zeros((n_fine, n))
        for i in range(n_fine):
            p = (i + 0.5) / F - 0.5
            for j in range(int(np.floor(p)) - 1, int(np.floor(p)) + 3):
                out[i, min(max(j, 0), n - 1)] += kernel(p - j)
        return out

    h, w = coarse.shape
    return axis(H, h) @ coarse.astype(np.float64) @ axis(W, w).T


def _numpy_spectrum(f: np.ndarray) -> np.ndarray:
    p = np.fft.fftshift(np.abs(np.fft.fft2(f, norm="ortho")) ** 2).ravel()
    ky, kx = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    k = np.hypot(ky - H // 2, kx - W / 2).ravel()
    nbins = min(H // 2, W // 2) - 1
    b = np.floor(k * nbins / (k.max() + 1)).astype(int)
    return np.bincount(b, p, nbins) / np.bincount(b, minlength=nbins)


def test_a_residual_runs_mean_grid_adds_its_patch_lines(tmp_path):
    """A residual run sampled with another overlap than it trained with fuses its regression
    mean on the trained grid (residual_stats.json): the seam score counts both grids' lines."""
    run = _make_run(tmp_path)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["objective"] = {"regression_run": str(tmp_path / "regression")}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    stats = {"mean": [0.0, 0.0], "std": [1.0, 1.0], "count": [1, 1],
             "mean_patching": {"overlap_pix": 2, "boundary_pix": 0, "window": "cosine",
                               "chunk_size": None}}  # fmt: skip
    (run / "residual_stats.json").write_text(json.dumps(stats))
    assert main(["evaluate", str(run), "--no-plots"]) == 0
    result = json.loads((run / "eval" / "metrics.json").read_text())
    assert result["regression_mean_grid"] == {"patch_shape": [12, 12], "overlap_pix": 2,
                                              "boundary_pix": 0}  # fmt: skip
    both = [np.union1d(patch_lines(n, 12, 4, 0), patch_lines(n, 12, 2, 0)) for n in (H, W)]
    assert len(both[0]) > len(patch_lines(H, 12, 4, 0))
    seam = result["scores"]["a"]["seam"]
    assert (seam["lines_y"], seam["lines_x"]) == (len(both[0]), len(both[1]))
    stats["mean_patching"]["overlap_pix"] = 4  # the samples' own grid: nothing to add
    (run / "residual_stats.json").write_text(json.dumps(stats))
    assert main(["evaluate", str(run), "--no-plots"]) == 0
    result = json.loads((run / "eval" / "metrics.json").read_text())
    assert result["regression_mean_grid"] is None
    assert result["scores"]["a"]["seam"]["lines_y"] == len(patch_lines(H, 12, 4, 0))


def _numpy_seam_and_imprint(ens: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Seam score and coarse-cell imprint of members (M, T, H, W) against the truth (T, H, W),
    lines grouped by k mod F (the condition's cells, aligned), recomputed line by line."""
    lines = [set(patch_lines(n, 12, 4, 0).tolist()) for n in (H, W)]
    sums = {}  # (field, axis, class, on line) -> [sum d^2, count]
    for t in range(truth.shape[0]):
        valid = np.isfinite(truth[t]) & np.isfinite(ens[:, t]).all(0)
        for who, f in [("x", m) for m in ens[:, t]] + [("y", truth[t])]:
            for axis, n in ((0, H), (1, W)):
                for k in range(1, n):
                    a, b = (f[k - 1], f[k]) if axis == 0 else (f[:, k - 1], f[:, k])
                    va, vb = (
                        (valid[k - 1], valid[k]) if axis == 0 else (valid[:, k - 1], valid[:, k])
                    )
                    d2 = ((b.astype(np.float64) - a)[va & vb] ** 2).tolist()
                    key = (who, axis, k % F, k in lines[axis])
                    got = sums.setdefault(key, [0.0, 0])
                    got[0], got[1] = got[0] + sum(d2), got[1] + len(d2)

    def mean(*key):
        total, count = sums.get(key, [0.0, 0])
        return total / count if count else math.nan

    def ratio(who):
        num = den = 0.0
        for axis in (0, 1):
            for c in range(F):
                on, off = sums.get((who, axis, c, True)), sums.get((who, axis, c, False))
                if on and off:
                    num += on[1] * mean(who, axis, c, True) / mean(who, axis, c, False)
                    den += on[1]
        return num / den

    imprint = 0.0
    for axis in (0, 1):
        q = []
        for c in range(F):
            every = [sums.get((w, axis, c, s), [0.0, 0]) for w in "xy" for s in (True, False)]
            x = (every[0][0] + every[1][0]) / (every[0][1] + every[1][1])
            y = (every[2][0] + every[3][0]) / (every[2][1] + every[3][1])
            q.append(x / y)
        imprint = max(imprint, max(q) / min(q))
    return ratio("x") / ratio("y"), imprint


def test_baselines_equal_a_direct_numpy_computation(tmp_path, capsys):
    """Interpolation baselines of the run's condition files: bicubic (Keys) and conservative
    (= repeating each coarse cell for an integer factor) fields, their RMSE, MAE, the
    ensemble's CRPS / RMSE skill and the fine-scale power ratio, all recomputed here."""
    run = _make_run(tmp_path)
    coarse = _write_condition(tmp_path / "coarse.nc")
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["data"].update(condition_files=[str(tmp_path / "coarse.nc")], condition_variables=VARS)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["evaluate", str(run)]) == 0
    printed = capsys.readouterr().out
    result = json.loads((run / "eval" / "metrics.json").read_text())
    _assert_png(run / "eval" / "spectra.png")  # with the baselines' spectra
    ens, truth = _fields()
    nbins = min(H // 2, W // 2) - 1
    centres = (np.arange(nbins) + 0.5) * (math.hypot(H // 2, W / 2) + 1) / nbins
    band = (centres > min(H, W) // F / 2) & (centres <= min(H, W) / 2)
    assert result["fine_band"] == [min(H // F, W // F) / 2, min(H, W) / 2]
    for c, name in enumerate(VARS):
        s = result["scores"][name]
        assert s["reference_baseline"] == "bicubic" and f"{name:<10} ensemble" in printed
        # lines compared within the condition's cells: classes k mod F on both axes
        seam, imprint = _numpy_seam_and_imprint(ens[:, :, c], truth[:, c])
        assert s["seam"]["position_classes"] == [F, F]
        assert s["seam"]["score"] == pytest.approx(seam, rel=1e-6)  # float32 differences
        assert s["coarse_imprint"] == pytest.approx(imprint, rel=1e-6)
        for kind in ("bicubic", "conservative"):
            fields = [_numpy_bicubic(coarse[h, c]) if kind == "bicubic" else
                      np.repeat(np.repeat(coarse[h, c], F, 0), F, 1) for h in HOURS]  # fmt: skip
            y = truth[:, c]
            valid = np.isfinite(y)
            err = np.stack(fields) - y  # (T, H, W)
            rmse, mae = np.sqrt(np.mean(err[valid] ** 2)), np.mean(np.abs(err[valid]))
            filled = [(np.where(valid[t], f, f[valid[t]].mean()),
                       np.where(valid[t], y[t], y[t][valid[t]].mean()))
                      for t, f in enumerate(fields)]  # fmt: skip
            p_base = sum(_numpy_spectrum(f) for f, _ in filled)
            p_truth = sum(_numpy_spectrum(g) for _, g in filled)
            got = s["baselines"][kind]
            assert got["rmse"] == pytest.approx(rmse, rel=1e-5)
            assert got["mae"] == pytest.approx(mae, rel=1e-5)
            assert got["crps_skill"] == pytest.approx(1 - s["crps"] / mae, rel=1e-5)
            assert got["rmse_skill"] == pytest.approx(1 - s["rmse"] / rmse, rel=1e-5)
            ratio = p_base[band].sum() / p_truth[band].sum()
            assert got["fine_power_ratio"] == pytest.approx(ratio, rel=1e-4)
            assert got["spectrum"] == pytest.approx(p_base / len(HOURS), rel=1e-4)


def test_a_grid_pair_without_a_separable_map_is_scored_without_interpolation(tmp_path, capsys):
    """A condition with coordinates under a truth grid without them has no interpolation
    baseline: the evaluation still runs and says why."""
    run = _make_run(tmp_path)
    _write_condition(tmp_path / "coarse.nc")
    with netCDF4.Dataset(tmp_path / "coarse.nc", "a") as nc:
        nc.createVariable("lat", "f8", ("lat",))[:] = np.arange(H // F) * 1.0
        nc.createVariable("lon", "f8", ("lon",))[:] = np.arange(W // F) * 1.0
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["data"].update(condition_files=[str(tmp_path / "coarse.nc")], condition_variables=VARS)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["evaluate", str(run), "--no-plots"]) == 0
    result = json.loads((run / "eval" / "metrics.json").read_text())
    assert result["condition"].startswith("no interpolation baseline")
    assert result["scores"]["a"]["baselines"] == {} and result["fine_band"] is None
    assert "baselines: none (no interpolation baseline" in capsys.readouterr().out
