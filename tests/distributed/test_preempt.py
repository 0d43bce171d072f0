"""The stop-signal flag, the Slurm requeue helpers and the run.stop_signals / run.requeue keys;
and one real single-process stop: exit code 75 and a printed command that resumes."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hpcdiff.cli import EXIT_STOPPED
from hpcdiff.config import ConfigError
from hpcdiff.distributed.preempt import (
    StopFlag,
    check_requeue,
    resume_command,
    signal_of,
    slurm_job_id,
)
from hpcdiff.experiment.config import load_config

BIN = Path(sys.executable).parent


def test_signal_names_in_any_spelling_and_uncatchable_ones_refused():
    assert signal_of("SIGUSR2") is signal.SIGUSR2
    assert signal_of("usr1") is signal.SIGUSR1
    assert signal_of(" TERM ") is signal.SIGTERM
    for bad, why in (("SIGKILL", "cannot be caught"), ("STOP", "cannot be caught"),
                     ("SIGFOO", "not a signal"), ("SIG_IGN", "not a signal")):  # fmt: skip
        with pytest.raises(ValueError, match=why):
            signal_of(bad)


def test_stop_signals_key_is_validated_at_load_naming_the_key():
    cfg = load_config(None, ["data.files=[x.nc]", "data.variables=[t]"])
    assert cfg.run.stop_signals == ["SIGTERM", "SIGUSR2"] and cfg.run.requeue == "auto"
    with pytest.raises(ConfigError, match=r"'run.stop_signals': SIGKILL cannot be caught"):
        load_config(None, ["data.files=[x.nc]", "data.variables=[t]", "run.stop_signals=[KILL]"])
    with pytest.raises(ConfigError, match="run.requeue"):
        load_config(None, ["data.files=[x.nc]", "data.variables=[t]", "run.requeue=sometimes"])


def test_handler_only_records_the_first_signal():
    flag = StopFlag()
    before = signal.getsignal(signal.SIGUSR1)
    try:
        flag.install(["USR1", "SIGUSR1"])
        assert flag.signals == (signal.SIGUSR1,)
        assert flag.agreed() is False  # no process group: this rank's flag decides
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGUSR1)
        assert flag.received == "SIGUSR1" and flag.agreed() is True
        flag.received = None
        flag.configure(["SIGUSR2"])  # narrowed to the config's list: USR1 acts by default again
        assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL
        assert flag.signals == (signal.SIGUSR2,)
    finally:
        signal.signal(signal.SIGUSR1, before)
        signal.signal(signal.SIGUSR2, signal.SIG_DFL)


def test_requeue_target_and_checks():
    assert slurm_job_id({"SLURM_JOB_ID": "12"}) == "12"
    array = {"SLURM_JOB_ID": "15", "SLURM_ARRAY_JOB_ID": "12", "SLURM_ARRAY_TASK_ID": "3"}
    assert slurm_job_id(array) == "12_3"
    assert slurm_job_id({}) is None
    with pytest.raises(ConfigError, match="'run.requeue' is 'always' but this is not a Slurm"):
        check_requeue("always", "latest", {})
    with pytest.raises(ConfigError, match="checkpoint.resume=latest"):
        check_requeue("always", "none", {"SLURM_JOB_ID": "1"})
    check_requeue("auto", "none", {})  # auto outside Slurm: prints the command instead


def test_resume_command_reruns_the_same_arguments():
    argv = ["/x/hpcdiff/__main__.py", "train", "--config", "a b.yaml", "run.steps=9"]
    cmd = resume_command("none", "latest", argv)
    assert shlex.split(cmd) == [sys.executable, "-m", "hpcdiff", *argv[1:]]
    assert shlex.split(resume_command("none", "none", argv))[-1] == "checkpoint.resume=latest"
    assert resume_command("torchrun", "latest", argv).endswith("torchrun launch as this one)")


@pytest.mark.multiprocess
def test_one_process_stops_with_code_75_and_the_printed_command_resumes(tmp_path):
    subprocess.run(
        [BIN / "hpcdiff", "data", "synth", "--out", "data", "--shape", "32", "32",
         "--times", "6", "--files", "1"],
        cwd=tmp_path, check=True, capture_output=True,
    )  # fmt: skip
    data = yaml.safe_load((tmp_path / "data" / "data.yaml").read_text())["data"]
    data.update(batch_size=1, patch_shape=[16, 16], patches_per_sample=1)
    cfg = {"run": {"steps": 40, "log_every": 1, "progress": "never"}, "data": data,
           "model": {"name": "SongUNet-S", "args": {"model_channels": 8, "channel_mult": [1],
                                                     "num_blocks": 1, "attn_resolutions": []}},
           "checkpoint": {"every_steps": 1000, "resume": "none"}}  # fmt: skip
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "hpcdiff", "train", "--config", "c.yaml"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip
    metrics = tmp_path / "runs" / "run" / "metrics.jsonl"
    while not metrics.exists() or len(metrics.read_text().splitlines()) < 2:
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_STOPPED, err[-3000:]
    step = int(re.search(r"SIGTERM: stopped after step (\d+)", err).group(1))
    rerun = re.search(r"to resume, run: (.*)", err).group(1)  # adds checkpoint.resume=latest
    out = subprocess.run(shlex.split(rerun), cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    start = json.loads(out.stdout[out.stdout.index('{"run_dir"') :].splitlines()[0])
    assert start["start_step"] == step
    rows = [json.loads(r) for r in metrics.read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 41))
