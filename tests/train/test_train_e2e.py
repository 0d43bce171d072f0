"""End-to-end runs of `hpcdiff train` / `hpcdiff sample` on a small synthetic dataset.

Real components: the NetCDF files are written by `hpcdiff data synth`, training runs through
DeepSpeed (single process, and 2 ranks under torchrun), sampling reads the consolidated
checkpoint and writes NetCDF + PNG.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A run directory with a 48 x 48 synthetic dataset and a tiny experiment config."""
    work = tmp_path_factory.mktemp("e2e")
    subprocess.run(
        [BIN / "hpcdiff", "data", "synth", "--out", "data", "--shape", "48", "48",
         "--times", "8", "--files", "2"],
        cwd=work, check=True, capture_output=True,
    )  # fmt: skip
    data = yaml.safe_load((work / "data" / "data.yaml").read_text())["data"]
    data.update(batch_size=1, patch_shape=[16, 16], patches_per_sample=2)
    cfg = {
        "run": {"name": "tiny", "out_dir": "runs", "steps": 4, "log_every": 1},
        "data": data,
        "model": {"name": "SongUNet-S", "args": {"model_channels": 8, "channel_mult": [1],
                                                  "num_blocks": 1, "attn_resolutions": []}},
        "optim": {"lr": 1e-3},
        "zero": {"stage": 1},
        "ema": {"halflife_samples": 10},
        "checkpoint": {"every_steps": 2},
        "sample": {"num_steps": 4, "ensemble": 2, "overlap_pix": 4},
    }  # fmt: skip
    (work / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    return work


def _hpcdiff(work, *args, launcher=(), check=True):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [*launcher, *(["-m", "hpcdiff"] if launcher else [BIN / "hpcdiff"]), *args]
    out = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    if check and out.returncode != 0:
        raise AssertionError(f"{cmd} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out


def _losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_resume_continues_the_loss_curve_exactly(workdir):
    _hpcdiff(workdir, "train", "--config", "tiny.yaml", "run.name=straight")
    straight = _losses(workdir / "runs" / "straight")
    assert sorted(straight) == [1, 2, 3, 4]
    # Stop after 2 steps, then rerun the same command with the full length: resume: latest.
    _hpcdiff(workdir, "train", "--config", "tiny.yaml", "run.name=split", "run.steps=2")
    _hpcdiff(workdir, "train", "--config", "tiny.yaml", "run.name=split")
    split = _losses(workdir / "runs" / "split")
    assert split == straight  # bit-identical: model, optimizer, EMA, data position and RNG


def test_two_ranks_zero3_then_sample_writes_netcdf_and_plots(workdir):
    torchrun = (str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2")
    _hpcdiff(workdir, "train", "--config", "tiny.yaml", "run.name=zero3", "zero.stage=3",
             "run.steps=2", launcher=torchrun)  # fmt: skip
    run = workdir / "runs" / "zero3"
    assert sorted(_losses(run)) == [1, 2]
    assert yaml.safe_load((run / "config.yaml").read_text())["zero"]["stage"] == 3
    out = _hpcdiff(workdir, "sample", str(run))
    result = json.loads(out.stdout[out.stdout.index("{") :])
    import netCDF4
    import numpy as np

    with netCDF4.Dataset(result["netcdf"]) as nc:
        t2m = nc["t2m"][:]
        assert t2m.shape == (2, 1, 48, 48)
        assert np.isfinite(t2m).all()
        assert not np.allclose(t2m[0], t2m[1])  # members differ
        assert " since " in nc["time"].units  # the input's CF time units are kept
    assert all(Path(p).stat().st_size > 1000 for p in result["plots"])


def test_dry_run_prints_counts_and_bad_config_names_the_key(workdir):
    out = _hpcdiff(workdir, "train", "--config", "tiny.yaml", "--dry-run", "zero.stage=3")
    summary = json.loads(out.stdout[out.stdout.rindex("{") :])
    assert summary["zero_stage"] == 3 and summary["trainable_parameters"] > 0
    assert not (workdir / "runs" / "tiny" / "checkpoints").exists()
    bad = _hpcdiff(workdir, "train", "--config", "tiny.yaml", "optim.lrr=1", check=False)
    assert bad.returncode == 2
    assert "config key 'optim.lrr' is unknown" in bad.stderr


def test_bf16_gradient_accumulation_and_metrics_after_resume(workdir):
    """zero.precision=bf16 trains under autocast; grad_accum counts optimizer steps; a resumed
    run keeps one metrics row per step."""
    args = ("train", "--config", "tiny.yaml", "run.name=accum", "zero.precision=bf16",
            "zero.grad_accum_steps=2", "zero.stage=2")  # fmt: skip
    _hpcdiff(workdir, *args, "run.steps=2")
    _hpcdiff(workdir, *args, "checkpoint.resume=latest")
    run = workdir / "runs" / "accum"
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    assert all(r["samples_per_s"] > 0 for r in rows if "loss" in r)
    # checkpoints are numbered by optimizer steps, not micro-batches
    assert sorted(p.name for p in (run / "checkpoints").iterdir())[-1] == "step_000000004"


@pytest.mark.slow
@pytest.mark.multiprocess
def test_compiled_zero3_training_and_tiled_sampling_match_eager(workdir):
    """model.compile under ZeRO-3 on 2 ranks, then sample.compile with the domain split over
    both ranks: the same losses and samples as eager. The graphs are captured as with Inductor
    (forward and backward through AOT autograd, ZeRO-3's hooks around them) but run by the
    aot_eager backend: a cold Inductor compile of even this tiny network costs ~3 min of CI on
    2 cores. Inductor's own numerics and its kernel cache are measured by
    benchmarks/bench_compile.py (differences <= 1e-5 relative) and tests/test_compiling.py.
    Tolerance: decomposed ops may reorder float32 sums (~1e-7 relative per operation); a wrong
    weight or input gives O(1)."""
    import netCDF4
    import numpy as np

    torchrun = (str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2")
    common = ("--config", "tiny.yaml", "zero.stage=3", "run.steps=2")
    _hpcdiff(workdir, "train", *common, "run.name=z3eager", launcher=torchrun)
    _hpcdiff(workdir, "train", *common, "run.name=z3comp", "model.compile=true",
             "model.compile_backend=aot_eager", launcher=torchrun)  # fmt: skip
    eager, comp = (_losses(workdir / "runs" / n) for n in ("z3eager", "z3comp"))
    assert sorted(comp) == [1, 2]
    for step, loss in eager.items():
        assert comp[step] == pytest.approx(loss, rel=1e-4), step
    run = workdir / "runs" / "z3comp"
    assert (run / "compile_cache").is_dir()  # the run's cache (Inductor fills it)
    samples = {}
    for flag in ("false", "true"):
        _hpcdiff(workdir, "sample", str(run), "sample.domain_grid=[1,2]",
                 f"sample.compile={flag}", "sample.compile_backend=aot_eager",
                 launcher=torchrun)  # fmt: skip
        with netCDF4.Dataset(run / "samples" / "samples.nc") as nc:
            samples[flag] = np.asarray(nc["t2m"][:])
    scale = np.abs(samples["false"]).max()
    np.testing.assert_allclose(samples["true"], samples["false"], rtol=0, atol=1e-4 * scale)


def test_torch_trace_covers_the_capture_window_on_every_rank(workdir):
    torchrun = (str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2")
    _hpcdiff(workdir, "train", "--config", "tiny.yaml", "run.name=trace", "run.steps=3",
             "profiling.capture_steps=[1, 2]", "profiling.torch_trace=true",
             launcher=torchrun)  # fmt: skip
    for rank in (0, 1):
        trace = json.loads((workdir / "runs" / "trace" / "traces" / f"rank_{rank:05d}.json")
                           .read_text())  # fmt: skip
        names = {e.get("name", "") for e in trace["traceEvents"]}
        assert any("conv" in n for n in names)  # the backbone's kernels were recorded
    bad = _hpcdiff(workdir, "train", "--config", "tiny.yaml", "profiling.capture_steps=[3, 9]",
                   check=False)  # fmt: skip
    assert bad.returncode == 2 and "'profiling.capture_steps': stop 9" in bad.stderr
    bad = _hpcdiff(workdir, "train", "--config", "tiny.yaml", "profiling.torch_trace=true",
                   check=False)  # fmt: skip
    assert bad.returncode == 2 and "needs profiling.capture_steps" in bad.stderr


@pytest.mark.multiprocess
def test_same_losses_under_torchrun_and_mpiexec(workdir):
    """`hpcdiff train` through launchers/mpirun.sh (MPICH's mpiexec from the venv) reproduces
    the torchrun run bit for bit: rank discovery, seeding and data sharding do not depend on
    the launcher."""
    common = ("train", "--config", str(workdir / "tiny.yaml"), "run.steps=2", "zero.stage=1")
    torchrun = (str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2")
    _hpcdiff(workdir, *common, "run.name=by_torchrun", launcher=torchrun)
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")},
        "NP": "2", "MPIRUN": str(BIN / "mpiexec"), "HPCDIFF_PYTHON": sys.executable,
        "OMP_NUM_THREADS": "1",
    }  # fmt: skip
    cmd = [ROOT / "launchers" / "mpirun.sh", *common, "run.name=by_mpiexec"]
    out = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    a, b = _losses(workdir / "runs" / "by_torchrun"), _losses(workdir / "runs" / "by_mpiexec")
    assert sorted(a) == [1, 2] and a == b


def _checkpoint_fault(workdir, run_dir: Path, steps: int, prefix=()):
    """Rerun ``run_dir``'s training to ``steps`` expecting the checkpoint write to fail."""
    out = subprocess.run(
        [*prefix, BIN / "hpcdiff", "train", "--config", "tiny.yaml",
         f"run.out_dir={run_dir.parent}", f"run.name={run_dir.name}", f"run.steps={steps}"],
        cwd=workdir, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert out.returncode == 4, out.stdout[-2000:] + out.stderr[-4000:]  # EXIT_IO
    lines = out.stderr.strip().splitlines()
    assert "Traceback" not in out.stderr and len(lines) == 1, out.stderr  # one line
    assert lines[0].startswith("hpcdiff train: error: checkpoint ")
    assert str(run_dir / "checkpoints") in lines[0]
    ckpts = run_dir / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_000000002"]  # no temporary left
    from hpcdiff.distributed.checkpoint import verify_checkpoint

    assert verify_checkpoint(ckpts / "step_000000002") == []
    log = (run_dir / "logs" / "rank00000.log").read_text()
    assert "Traceback" in log and "CheckpointWriteError" in log  # kept in the rank log
    return lines[0]


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs (root)")
def test_disk_full_while_checkpointing_keeps_the_previous_one(workdir, tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", mnt], check=True)
    try:
        run = mnt / "full"
        _hpcdiff(workdir, "train", "--config", "tiny.yaml", f"run.out_dir={mnt}",
                 "run.name=full", "run.steps=2")  # fmt: skip
        ckpt = sum(p.stat().st_size for p in (run / "checkpoints").rglob("*") if p.is_file())
        fs = os.statvfs(mnt)
        used = (fs.f_blocks - fs.f_bfree) * fs.f_frsize
        # Room for the logs and half of the next checkpoint: its write fails with ENOSPC.
        subprocess.run(["mount", "-o", f"remount,size={used + ckpt // 2}", mnt], check=True)
        line = _checkpoint_fault(workdir, run, steps=4)
        assert "No space left on device" in line
        subprocess.run(["mount", "-o", "remount,size=64m", mnt], check=True)
        _hpcdiff(workdir, "train", "--config", "tiny.yaml", f"run.out_dir={mnt}",
                 "run.name=full", "run.steps=4")  # fmt: skip
        _hpcdiff(workdir, "train", "--config", "tiny.yaml", "run.name=full_ref", "run.steps=4")
        assert _losses(run) == _losses(workdir / "runs" / "full_ref")  # resumed from step 2
    finally:
        subprocess.run(["umount", mnt], check=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="drops root's permission override")
def test_permission_denied_while_checkpointing_keeps_the_previous_one(workdir):
    run = workdir / "runs" / "denied"
    _hpcdiff(workdir, "train", "--config", "tiny.yaml", "run.name=denied", "run.steps=2")
    (run / "checkpoints").chmod(0o555)
    try:  # root without CAP_DAC_OVERRIDE obeys the mode bits like any user
        drop = ("setpriv", "--bounding-set=-dac_override,-dac_read_search", "--")
        line = _checkpoint_fault(workdir, run, steps=4, prefix=drop)
    finally:
        (run / "checkpoints").chmod(0o755)
    assert "Permission denied" in line


@pytest.mark.multiprocess
def test_regression_then_residual_diffusion_on_two_ranks(workdir):
    """objective.kind=regression and a residual diffusion run naming it, both on 2 ranks
    (torchrun); the residual run's samples on 2 ranks with sample.domain_grid [1, 2] equal
    those of 1 rank, regression mean included, and `hpcdiff evaluate` scores that mean as a
    baseline next to the interpolations."""
    import netCDF4
    import numpy as np

    torchrun = (str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2")
    common = ("train", "--config", "tiny.yaml", "run.steps=2", "zero.stage=1")
    _hpcdiff(workdir, *common, "run.name=reg", "objective.kind=regression", launcher=torchrun)
    _hpcdiff(workdir, *common, "run.name=res", "objective.regression_run=runs/reg",
             launcher=torchrun)  # fmt: skip
    reg, res = workdir / "runs" / "reg", workdir / "runs" / "res"
    assert sorted(_losses(reg)) == sorted(_losses(res)) == [1, 2]
    stats = json.loads((res / "residual_stats.json").read_text())
    assert stats["count"] == [4 * 48 * 48] * 4  # the 4 training times once, split over ranks
    assert all(0 < s < 10 for s in stats["std"])
    assert (res / "regression.mdlus").is_file()

    def sample(*args, launcher=()):
        _hpcdiff(workdir, "sample", "runs/res", "sample.num_steps=3", *args, launcher=launcher)
        with netCDF4.Dataset(res / "samples" / "samples.nc") as nc:
            return {k: nc[k][:].filled(np.nan) for k in ("t2m", "tp", "t2m_regression")}

    one = sample()
    two = sample("sample.domain_grid=[1, 2]", launcher=torchrun)
    for key, value in one.items():  # expm1 of log1p(tp) amplifies float32 rounding
        np.testing.assert_allclose(two[key], value, rtol=1e-4, atol=1e-5, err_msg=key)
    assert np.isfinite(one["t2m_regression"]).all()
    assert not np.allclose(one["t2m"][0], one["t2m_regression"])  # the residual is added
    from hpcdiff.evaluate import evaluate_run

    cwd = os.getcwd()
    try:  # the run's config names data files relative to the work directory
        os.chdir(workdir)
        scores = evaluate_run(res, make_plots=False)["scores"]
    finally:
        os.chdir(cwd)
    assert set(scores["t2m"]["baselines"]) == {"bicubic", "conservative", "regression"}
    assert scores["tp"]["reference_baseline"] == "regression"
