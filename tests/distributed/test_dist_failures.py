"""A dead rank stops the job with its name; training resumes exactly from the last checkpoint,
also when the newest checkpoint is corrupt."""

from __future__ import annotations

import shutil
import signal
import socket
import threading
import time
from datetime import timedelta

import pytest
import torch.distributed as dist
from distlaunch import read_result, spawn_ranks

from hpcdiff.distributed.checkpoint import list_checkpoints, verify_checkpoint
from hpcdiff.distributed.watchdog import EXIT_PEER_FAILED, Watchdog

TIMEOUT_S = 5.0
HANG_GUARD_S = TIMEOUT_S + 90  # start-up included; only a hang gets near this
TRAIN = ["--stages", "2", "--steps", "6", "--ckpt-every", "2", "--timeout", str(TIMEOUT_S)]


def _finish(procs) -> list[tuple[int, str, str]]:
    out = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=HANG_GUARD_S)
        out.append((proc.returncode, stdout, stderr))
    return out


@pytest.fixture(scope="module")
def killed(tmp_path_factory) -> dict:
    """Two ranks train ZeRO-2 with a checkpoint every 2 steps; rank 1 is SIGKILLed at step 4."""
    root = tmp_path_factory.mktemp("killed")
    args = ["--out", str(root / "r.json"), "--ckpt-dir", str(root / "ckpt"), *TRAIN]
    rank0, rank1 = spawn_ranks([*args, "--die-rank", "1", "--die-step", "4"])
    rank1.wait(timeout=HANG_GUARD_S)
    died = time.monotonic()
    results = _finish([rank0, rank1])  # a hang of rank 0 fails here
    return {"results": results, "ckpt": root / "ckpt", "exit_after_s": time.monotonic() - died}


@pytest.mark.multiprocess
def test_killed_rank_makes_the_other_exit_nonzero_naming_it(killed):
    (code0, _, err0), (code1, _, _) = killed["results"]
    assert code1 == -signal.SIGKILL
    assert code0 != 0
    print(f"rank 0 exited {killed['exit_after_s']:.1f} s after rank 1 was killed")
    assert killed["exit_after_s"] < TIMEOUT_S + 30  # the timeout plus slack for a loaded host
    named = ("not responding: rank 1 (", "rank 1 (")  # found after the collective broke / by beat
    assert any(text in err0 for text in named) and "[hpcdiff rank 0] error" in err0, err0
    steps = [p.name for p in list_checkpoints(killed["ckpt"] / "stage2")]
    assert steps == ["step_000000004", "step_000000002"]
    assert verify_checkpoint(killed["ckpt"] / "stage2" / "step_000000004") == []


def _resume(tmp_path, ckpt) -> tuple[dict, list]:
    mine = tmp_path / "ckpt"
    shutil.copytree(ckpt, mine)
    procs = spawn_ranks(
        ["--out", str(tmp_path / "r.json"), "--ckpt-dir", str(mine), *TRAIN, "--resume"]
    )
    results = _finish(procs)
    assert [code for code, _, _ in results] == [0, 0], results[0][2][-3000:]
    return read_result(tmp_path / "r.json")["runs"][2], results


@pytest.mark.multiprocess
def test_resume_latest_continues_the_uninterrupted_curve(killed, torchrun_run, tmp_path):
    resumed, _ = _resume(tmp_path, killed["ckpt"])
    uninterrupted = torchrun_run["result"]["runs"][2]["losses"]  # same config, never stopped
    assert resumed["start"] == 4
    assert resumed["losses"] == {4: uninterrupted[4], 5: uninterrupted[5]}


@pytest.mark.multiprocess
def test_corrupt_newest_checkpoint_falls_back_to_the_previous(killed, torchrun_run, tmp_path):
    corrupt = tmp_path / "src"
    shutil.copytree(killed["ckpt"], corrupt)
    victim = corrupt / "stage2" / "step_000000004" / "state" / "rank_00000.pt"
    victim.write_bytes(victim.read_bytes()[:-100])  # truncated, as by a full disk
    resumed, results = _resume(tmp_path, corrupt)
    assert "step_000000004 is corrupt or incomplete" in results[0][2]
    uninterrupted = torchrun_run["result"]["runs"][2]["losses"]
    assert resumed["start"] == 2
    assert resumed["losses"] == {s: uninterrupted[s] for s in range(2, 6)}
    assert verify_checkpoint(tmp_path / "ckpt" / "stage2" / "step_000000004") == []  # rewritten


@pytest.fixture(scope="module")
def killed_in_save(tmp_path_factory) -> dict:
    """Like ``killed``, but rank 1 is SIGKILLed half-way through writing the step-4 checkpoint."""
    root = tmp_path_factory.mktemp("killed_in_save")
    args = ["--out", str(root / "r.json"), "--ckpt-dir", str(root / "ckpt"), *TRAIN]
    results = _finish(spawn_ranks([*args, "--die-rank", "1", "--die-in-save", "4"]))
    return {"results": results, "ckpt": root / "ckpt"}


@pytest.mark.multiprocess
def test_rank_killed_mid_save_leaves_the_previous_checkpoint_resumable(
    killed_in_save, torchrun_run, tmp_path
):
    (code0, _, err0), (code1, _, _) = killed_in_save["results"]
    assert code1 == -signal.SIGKILL and code0 != 0
    assert "rank 1 (" in err0, err0[-3000:]
    stage = killed_in_save["ckpt"] / "stage2"
    assert [p.name for p in list_checkpoints(stage)] == ["step_000000002"]
    assert (stage / ".tmp_step_000000004").is_dir()  # what the dead rank's save left
    assert verify_checkpoint(stage / "step_000000002") == []
    resumed, results = _resume(tmp_path, killed_in_save["ckpt"])
    assert not (tmp_path / "ckpt" / "stage2" / ".tmp_step_000000004").exists()  # cleaned up
    uninterrupted = torchrun_run["result"]["runs"][2]["losses"]
    assert resumed["start"] == 2
    assert resumed["losses"] == {s: uninterrupted[s] for s in range(2, 6)}


@pytest.mark.multiprocess
def test_fallback_is_reported_even_with_python_warnings_ignored(killed, tmp_path):
    corrupt = tmp_path / "src"
    shutil.copytree(killed["ckpt"], corrupt)
    victim = corrupt / "stage2" / "step_000000004" / "extra" / "rank_00001.pt"
    victim.write_bytes(victim.read_bytes()[:-1] + b"x")  # same size, a non-first file
    args = ["--out", str(tmp_path / "r.json"), "--ckpt-dir", str(corrupt), *TRAIN, "--resume"]
    procs = spawn_ranks(args, extra_env={"PYTHONWARNINGS": "ignore"})
    results = _finish(procs)
    assert [code for code, _, _ in results] == [0, 0], results[0][2][-3000:]
    assert "step_000000004 is corrupt or incomplete" in results[0][2]
    assert "extra/rank_00001.pt fails its sha256 checksum" in results[0][2]
    assert read_result(tmp_path / "r.json")["runs"][2]["start"] == 2


LEAVE_WITHOUT_SHUTDOWN = """
import sys, time
import torch, torch.distributed as dist
from hpcdiff.distributed.config import DistConfig
from hpcdiff.distributed.runtime import init_distributed
ctx = init_distributed(DistConfig(timeout_s=2.0))
dist.all_reduce(torch.ones(1))
time.sleep(3.0 * ctx.env.rank)  # rank 1 works on, without collectives, past the timeout
print("finished", ctx.env.rank)
"""


@pytest.mark.multiprocess
def test_ranks_finishing_apart_without_shutdown_exit_cleanly(tmp_path):
    script = tmp_path / "leave.py"
    script.write_text(LEAVE_WITHOUT_SHUTDOWN)
    results = _finish(spawn_ranks([], script=script))
    assert [code for code, _, _ in results] == [0, 0], [err[-2000:] for _, _, err in results]
    assert [out.split() for _, out, _ in results] == [["finished", "0"], ["finished", "1"]]


def _store_pair(timeout_s: float) -> tuple:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    wait = timedelta(seconds=10)
    server = dist.TCPStore(
        "127.0.0.1", port, 2, is_master=True, timeout=wait, wait_for_workers=False
    )
    clients = [dist.TCPStore("127.0.0.1", port, 2, is_master=False, timeout=wait) for _ in range(2)]
    dogs = [Watchdog(c, r, 2, timeout_s, f"127.0.0.1:{port}") for r, c in enumerate(clients)]
    return server, dogs


def _record_exit(dog: Watchdog) -> threading.Event:
    fired = threading.Event()

    def record(code: int) -> None:
        dog.exit_code = code
        fired.set()

    dog.exit = record
    return fired


def test_watchdog_names_a_rank_that_stops_beating(capfd):
    server, (dog0, dog1) = _store_pair(timeout_s=1.0)
    fired = _record_exit(dog0)
    dog1.start()  # rank 1 registers, then "dies": its heartbeat thread stops without `stop()`
    dog1._stop.set()
    dog0.start()
    assert fired.wait(timeout=15)
    assert dog0.exit_code == EXIT_PEER_FAILED
    err = capfd.readouterr().err
    assert "rank 1" in err and "sent no heartbeat" in err
    assert server.add("abort", 0) == 1  # every other rank is told to stop


def test_watchdog_accepts_a_rank_that_finished_cleanly():
    server, (dog0, dog1) = _store_pair(timeout_s=0.5)
    fired = _record_exit(dog0)
    dog0.start()
    dog1.start()
    dog1.stop()  # marks rank 1 as done
    time.sleep(2.5)
    dog0.stop()
    assert not fired.is_set()
    assert server.add("abort", 0) == 0
