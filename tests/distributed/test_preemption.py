"""Graceful stop, resume and requeue of `hpcdiff train` under the real launchers, and a rank that
hangs (SIGSTOP).

Every stopped run is resumed by the same command and must end bit for bit where an uninterrupted
2-rank run ends: the same loss at every step and the same consolidated weights (model and EMA).
A requeued Slurm job waits about two minutes before it is eligible again (Reason=BeginTime);
the tests release it at once with `scontrol update JobId=.. StartTime=now` to keep CI short.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import signalprobe
import torch
import yaml
from distlaunch import ROOT, worker_env

from hpcdiff.distributed import consolidate_checkpoint
from hpcdiff.train.checkpoint_cli import checkpoints_under

LAUNCHERS = ROOT / "launchers"
BIN = Path(sys.executable).parent
OPENMPI = "/usr/bin/mpirun"
STEPS = 30
GUARD_S = 300  # a hang fails the test instead of blocking CI


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A 48 x 48 synthetic dataset and a tiny 2-rank ZeRO-2 experiment with EMA; checkpoints
    only at the end (or at a stop)."""
    work = tmp_path_factory.mktemp("preempt")
    subprocess.run(
        [BIN / "hpcdiff", "data", "synth", "--out", "data", "--shape", "48", "48",
         "--times", "8", "--files", "2"],
        cwd=work, check=True, capture_output=True,
    )  # fmt: skip
    data = yaml.safe_load((work / "data" / "data.yaml").read_text())["data"]
    data.update(batch_size=1, patch_shape=[16, 16], patches_per_sample=2)
    cfg = {
        "run": {"out_dir": "runs", "steps": STEPS, "log_every": 1, "progress": "never"},
        "data": data,
        "model": {"name": "SongUNet-S", "args": {"model_channels": 8, "channel_mult": [1],
                                                  "num_blocks": 1, "attn_resolutions": []}},
        "optim": {"lr": 1e-3},
        "zero": {"stage": 2},
        "ema": {"halflife_samples": 10},
        "checkpoint": {"every_steps": 1000},
        "dist": {"timeout_s": 60},
    }  # fmt: skip
    (work / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    return work


def env_for(**extra: str) -> dict[str, str]:
    env = worker_env(HPCDIFF_PYTHON=sys.executable, NPROC_PER_NODE="2", NP="2")
    env.pop("HPCDIFF_SCRIPT")  # `-m hpcdiff`, not the test worker
    return {**env, **extra}


def launch(work: Path, cmd: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        cmd, cwd=work, env=env, start_new_session=True, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in metrics(run) if "loss" in r}


def wait_for_step(run: Path, step: int, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + GUARD_S
    while max(losses(run), default=0) < step:
        assert time.monotonic() < deadline, f"{run} never reached step {step}"
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"launcher exited {proc.returncode} early:\n{proc.stderr.read()[-4000:]}")
        time.sleep(0.1)


def weights(run: Path, tmp: Path) -> dict[str, dict[str, torch.Tensor]]:
    """The consolidated model and EMA weights of the run's newest checkpoint."""
    out = {}
    for kind in ("model", "ema"):
        newest = checkpoints_under(run)[0]  # as `hpcdiff checkpoint consolidate RUN` picks it
        path = consolidate_checkpoint(newest, tmp / f"{run.name}_{kind}.pt", weights=kind)
        out[kind] = torch.load(path, weights_only=True)
    return out


def assert_same_weights(a: dict, b: dict) -> None:
    for kind in ("model", "ema"):
        assert a[kind].keys() == b[kind].keys()
        unequal = [k for k in a[kind] if not torch.equal(a[kind][k], b[kind][k])]
        assert not unequal, f"{kind} weights differ: {unequal[:5]}"


@pytest.fixture(scope="module")
def uninterrupted(work, tmp_path_factory) -> dict:
    """The same experiment on 2 ranks under torchrun, never stopped."""
    cmd = [str(LAUNCHERS / "torchrun.sh"), "train", "--config", "tiny.yaml", "run.name=straight"]
    out = subprocess.run(cmd, cwd=work, env=env_for(), capture_output=True, text=True,
                         timeout=GUARD_S)  # fmt: skip
    assert out.returncode == 0, out.stderr[-4000:]
    run = work / "runs" / "straight"
    assert sorted(losses(run)) == list(range(1, STEPS + 1))
    return {"losses": losses(run), "weights": weights(run, tmp_path_factory.mktemp("w"))}


LAUNCHES = {
    # name: (launcher script, extra environment, signal sent to the launcher process, signal
    # the ranks get: mpirun.sh relays SIGTERM to Open MPI as SIGUSR2, which mpirun forwards
    # without killing the ranks 2 s later, and SIGUSR2 to MPICH as SIGTERM, which mpiexec
    # forwards instead of dying)
    "torchrun-USR2": ("torchrun.sh", {}, signal.SIGUSR2, "SIGUSR2"),
    "openmpi-TERM": ("mpirun.sh", {"MPIRUN": OPENMPI}, signal.SIGTERM, "SIGUSR2"),
    "mpich-USR2": ("mpirun.sh", {"MPIRUN": str(BIN / "mpiexec")}, signal.SIGUSR2, "SIGTERM"),
}


@pytest.mark.multiprocess
@pytest.mark.parametrize("name", list(LAUNCHES))
def test_signal_to_launcher_stops_after_a_step_and_resume_matches(
    name, work, uninterrupted, tmp_path
):
    script, extra, sig, received = LAUNCHES[name]
    cmd = [str(LAUNCHERS / script), "train", "--config", "tiny.yaml", f"run.name={name}"]
    run, env = work / "runs" / name, env_for(**extra)
    proc = launch(work, cmd, env)
    wait_for_step(run, 3, proc)
    proc.send_signal(sig)  # the launcher only (own session), as a scheduler or user would
    _, err = proc.communicate(timeout=GUARD_S)
    stop = re.search(rf"{received}: stopped after step (\d+)", err)
    assert stop, err[-4000:]
    step = int(stop.group(1))
    assert 3 <= step < STEPS
    assert max(losses(run)) == step  # no rank went on past the agreed step
    assert "to resume, run: " in err and "train --config tiny.yaml" in err
    again = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True,
                           timeout=GUARD_S)  # fmt: skip
    assert again.returncode == 0, again.stderr[-4000:]
    assert losses(run) == uninterrupted["losses"]
    assert_same_weights(weights(run, tmp_path), uninterrupted["weights"])


RELAYS = [
    # launcher script, MPIRUN, signal sent to the script, signal every rank must get
    ("torchrun.sh", None, signal.SIGUSR2, "SIGUSR2"),  # plain torchrun dies of it
    ("mpirun.sh", OPENMPI, signal.SIGTERM, "SIGUSR2"),  # Open MPI kills the ranks 2 s after TERM
    ("mpirun.sh", OPENMPI, signal.SIGINT, "SIGUSR2"),
    ("mpirun.sh", str(BIN / "mpiexec"), signal.SIGUSR2, "SIGTERM"),  # MPICH dies of USR2
]


@pytest.mark.multiprocess
@pytest.mark.parametrize("script,mpirun,sig,received", RELAYS)
def test_launcher_scripts_pass_a_stop_signal_on_and_keep_the_ranks(
    script, mpirun, sig, received, tmp_path
):
    env = env_for(HPCDIFF_SCRIPT=signalprobe.__file__, **({"MPIRUN": mpirun} if mpirun else {}))
    got = signalprobe.deliver([str(LAUNCHERS / script)], sig, tmp_path / "probe", env, watch=4)
    assert got.pop("ended") == {}  # no rank killed within 4 s of the signal
    assert got.pop("launcher") is None  # the launcher waits for its ranks
    assert got == {"0": [received], "1": [received]}


# --- Slurm: scancel --signal, requeue, resume -----------------------------------------------


def job_fields(job: str, env: dict) -> dict[str, str]:
    show = subprocess.run(["scontrol", "-o", "show", "job", job], env=env, capture_output=True,
                          text=True)  # fmt: skip
    return dict(f.split("=", 1) for f in show.stdout.split() if "=" in f)


def follow_job(
    job: str, env: dict, timeout: float, *release: str, on_requeue=None
) -> dict[str, str]:
    """Until the job ends: release each requeue at once (instead of its ~2 min BeginTime),
    also setting the job fields ``release`` (``KEY=VALUE``), after calling ``on_requeue()``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fields = job_fields(job, env)
        state = fields.get("JobState", "UNKNOWN")
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"):
            return fields
        if state == "PENDING" and fields.get("Reason") == "BeginTime":
            if on_requeue is not None:
                on_requeue()
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now", *release],
                           env=env, capture_output=True)  # fmt: skip
        time.sleep(0.5)
    subprocess.run(["scancel", job], env=env, capture_output=True)
    pytest.fail(f"job {job} did not end in {timeout} s: {job_fields(job, env)}")


def submit(
    work: Path, name: str, env: dict, sbatch_args: list[str], *overrides: str,
    config: str = "tiny.yaml",
) -> str:  # fmt: skip
    cmd = [
        "sbatch", "--parsable", "-N1", "-n2", "--gpus-per-node=0", "--cpus-per-task=1",
        "--open-mode=append", f"--output={work / name}.out", f"--chdir={work}", *sbatch_args,
        str(LAUNCHERS / "sbatch.sh"), "train", "--config", config, f"run.name={name}",
        *overrides,
    ]  # fmt: skip
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().split(";")[0]


@pytest.mark.multiprocess
@pytest.mark.slow
@pytest.mark.parametrize("sig", ["USR2", "TERM"])
def test_slurm_job_signalled_is_requeued_and_finishes_like_uninterrupted(
    sig, slurm, work, uninterrupted, tmp_path
):
    env, name = env_for(**slurm), f"slurm_{sig}"
    job = submit(work, name, env, ["--time=10"])
    run = work / "runs" / name
    wait_for_step(run, 3)
    subprocess.run(["scancel", f"--signal={sig}", job], env=env, check=True)
    fields = follow_job(job, env, GUARD_S)
    log = (work / f"{name}.out").read_text()
    assert fields["JobState"] == "COMPLETED", log[-4000:]
    assert fields["Restarts"] == "1", fields
    stop = re.search(rf"SIG{sig}: stopped after step (\d+)", log)
    assert stop and 3 <= int(stop.group(1)) < STEPS, log[-4000:]
    assert f"requeued Slurm job {job}" in log
    assert losses(run) == uninterrupted["losses"]
    assert_same_weights(weights(run, tmp_path), uninterrupted["weights"])


@pytest.mark.multiprocess
@pytest.mark.slow
def test_slurm_plain_scancel_saves_and_stays_cancelled(slurm, work):
    env, name = env_for(**slurm), "slurm_cancel"
    job = submit(work, name, env, ["--time=10"])
    wait_for_step(work / "runs" / name, 3)
    subprocess.run(["scancel", job], env=env, check=True)
    fields = follow_job(job, env, GUARD_S)
    log = (work / f"{name}.out").read_text()
    assert fields["JobState"] == "CANCELLED" and fields["Restarts"] == "0", fields
    assert re.search(r"SIGTERM: stopped after step \d+", log), log[-4000:]
    assert f"Slurm job {job} is COMPLETING, not RUNNING (cancelled or at its time" in log
    assert "to resume, run: " in log


@pytest.mark.multiprocess
@pytest.mark.slow
def test_slurm_time_limit_finishes_through_requeues(slurm, work):
    """--time=2 --signal=USR2@50: slurmctld checks time limits every 30 s and signalled 45-50 s
    after the start here (up to a minute early, as documented). 3000 steps (~150 s of compute on
    an idle machine) outlast the first start, which stops after some step and requeues.
    To keep CI short the test then does what a user extending or shortening a run does: it
    edits run.steps in the job's config file (to 12 steps past the stop) and releases the
    requeued job with a 10 min limit, so the second start resumes and ends the run."""
    env, name, planned = env_for(**slurm), "slurm_time", 3000
    cfg = yaml.safe_load((work / "tiny.yaml").read_text())
    config = work / "time.yaml"
    config.write_text(yaml.safe_dump({**cfg, "run": {**cfg["run"], "steps": planned}}))
    log_file = work / f"{name}.out"

    def shorten() -> None:
        stop = re.search(r"SIG\w+: stopped after step (\d+)", log_file.read_text())
        if stop:
            short = {**cfg, "run": {**cfg["run"], "steps": int(stop.group(1)) + 12}}
            config.write_text(yaml.safe_dump(short))

    job = submit(work, name, env, ["--time=2", "--signal=USR2@50"], config=config.name)
    fields = follow_job(job, env, 1200, "TimeLimit=10", on_requeue=shorten)
    log = log_file.read_text()
    assert fields["JobState"] == "COMPLETED", log[-4000:]
    restarts = int(fields["Restarts"])
    stops = [int(s) for s in re.findall(r"SIG\w+: stopped after step (\d+)", log)]
    print(f"{restarts} restarts, stopped after steps {stops}")
    assert restarts == 1 and len(stops) == 1 and 0 < stops[0] < planned, log[-4000:]
    assert "requeued Slurm job" in log
    done = [r["step"] for r in metrics(work / "runs" / name) if "loss" in r]
    assert done == list(range(1, stops[0] + 13))  # every step once, across the restarts


# --- A hung rank ------------------------------------------------------------------------------

HANG_TIMEOUT_S = 8.0
HANGS = {
    "torchrun": ("torchrun.sh", {}, "RANK"),
    "openmpi": ("mpirun.sh", {"MPIRUN": OPENMPI}, "OMPI_COMM_WORLD_RANK"),
}


def rank_process(launcher: int, rank_var: str, rank: int) -> psutil.Process:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for child in psutil.Process(launcher).children(recursive=True):
            try:
                env, cmd = child.environ(), child.cmdline()
            except psutil.Error:
                continue
            if env.get(rank_var) == str(rank) and "hpcdiff" in cmd:
                return child
        time.sleep(0.2)
    raise AssertionError(f"no rank {rank} process under launcher {launcher}")


@pytest.mark.multiprocess
@pytest.mark.parametrize("name", list(HANGS))
def test_sigstopped_rank_makes_the_others_exit_naming_it(name, work):
    script, extra, rank_var = HANGS[name]
    cmd = [str(LAUNCHERS / script), "train", "--config", "tiny.yaml", f"run.name=hang_{name}",
           "run.steps=100000", f"dist.timeout_s={HANG_TIMEOUT_S}"]  # fmt: skip
    proc = launch(work, cmd, env_for(**extra))
    try:
        rank0, rank1 = (rank_process(proc.pid, rank_var, r) for r in (0, 1))
        wait_for_step(work / "runs" / f"hang_{name}", 2, proc)
        rank1.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        psutil.wait_procs([rank0], timeout=HANG_TIMEOUT_S + 60)
        exit_after = time.monotonic() - stopped
        assert not rank0.is_running(), "rank 0 still runs next to a hung rank"
        print(f"{name}: rank 0 exited {exit_after:.1f} s after rank 1 was stopped")
        assert exit_after < HANG_TIMEOUT_S + 30  # the timeout plus slack for a loaded host
        rank1.kill()
        _, err = proc.communicate(timeout=GUARD_S)
    finally:
        for p in [proc.pid]:
            try:
                os.killpg(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
    named = re.search(r"\[hpcdiff rank 0\] error: .*rank 1 \(", err)
    assert named, err[-4000:]
