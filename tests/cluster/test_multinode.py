"""`hpcdiff` on two nodes (network namespaces node1, node2 with 2 ranks each) under every
launcher, against 4 ranks on one node: losses bit for bit, the layout each rank resolved with
no hand-set variables, tiled training and sampling across nodes, and a node failure followed by
a resume on the node that is left.

Launches (about 20-30 s each on 2 cores): 4 ranks on node1 (plain and tiled), torchrun,
sbatch, Open MPI, MPICH, tiled sampling on 1 process and on 2 nodes, a failing run and its
resume. The reduction order of 4 gloo ranks does not depend on where they run, hence equality.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml
from clusterlaunch import AGENT, NODES, ROOT, SCRIPT, kill_group, losses, read_records

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

LAUNCHERS = ROOT / "launchers"
BIN = Path(sys.executable).parent
STEPS = 4  # steps of the launcher comparisons; the references run REF_STEPS
REF_STEPS = 10
TIMEOUT_S = 20  # dist.timeout_s of the failure test
IFNAME = {"GLOO_SOCKET_IFNAME": "hpcnet0", "NCCL_SOCKET_IFNAME": "=hpcnet0"}
OPENMPI_ARGS = f"--host node1:2,node2:2 --mca plm_rsh_agent {AGENT} --mca mpi_yield_when_idle 1"
MPICH_ARGS = f"-hosts node1:2,node2:2 -launcher ssh -launcher-exec {AGENT}"


@pytest.fixture(scope="module")
def work(cluster, tmp_path_factory) -> Path:
    """A 32 x 32 synthetic dataset and a tiny experiment config, checkpoints every 2 steps."""
    work = tmp_path_factory.mktemp("multinode")
    subprocess.run(
        [BIN / "hpcdiff", "data", "synth", "--out", "data", "--shape", "32", "32",
         "--times", "8", "--files", "2"],
        cwd=work, check=True, capture_output=True,
    )  # fmt: skip
    data = yaml.safe_load((work / "data" / "data.yaml").read_text())["data"]
    data.update(batch_size=1, patch_shape=[16, 16], patches_per_sample=2)
    cfg = {
        "run": {"name": "tiny", "out_dir": "runs", "steps": STEPS, "log_every": 1,
                "val_every": 0},
        "data": data,
        "model": {"name": "SongUNet-S", "args": {"model_channels": 8, "channel_mult": [1],
                                                  "num_blocks": 1, "attn_resolutions": []}},
        "optim": {"lr": 1e-3},
        "zero": {"stage": 1},
        "ema": {"halflife_samples": 10},
        "checkpoint": {"every_steps": 2},
        "sample": {"num_steps": 3, "ensemble": 2, "overlap_pix": 4},
    }  # fmt: skip
    (work / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    return work


def train(name: str, *overrides: str) -> list[str]:
    return ["train", "--config", "tiny.yaml", f"run.name={name}", *overrides]


def one_node(cluster, work: Path, name: str, *overrides: str) -> dict[int, float]:
    """4 ranks on node1 (torchrun standalone): the reference of every 2-node run."""
    env = cluster.env(work / "rec" / name, NPROC_PER_NODE="4")
    cmd = [LAUNCHERS / "torchrun.sh", *train(name, *overrides)]
    cluster.run("node1", cmd, env, work, work / f"{name}.log")
    return losses(work / "runs" / name)


@pytest.fixture(scope="module")
def reference(cluster, work) -> dict[int, float]:
    return one_node(cluster, work, "ref", f"run.steps={REF_STEPS}")


@pytest.fixture(scope="module")
def tiled_reference(cluster, work) -> dict[int, float]:
    return one_node(cluster, work, "tref", "domain.grid=[2, 2]")


def torchrun_nodes(cluster, work: Path, name: str, args: list[str], **extra: str):
    """launchers/torchrun.sh once per node: --nnodes 2 --nproc-per-node 2, c10d rendezvous on
    node1. Returns the two launches (not waited for) and their logs."""
    procs, logs = [], []
    for i, node in enumerate(NODES):
        env = cluster.env(work / "rec" / name, NNODES="2", NODE_RANK=str(i), NPROC_PER_NODE="2",
                          MASTER_ADDR="node1", MASTER_PORT="29400", RDZV_ID=name,
                          **extra)  # fmt: skip
        logs.append(work / f"{name}.{node}.log")
        procs.append(cluster.popen(node, [LAUNCHERS / "torchrun.sh", *args], env, work, logs[-1]))
    return procs, logs


def test_interface_towards_rank_0_from_both_nodes(cluster, work):
    """On node2 the route to node1 leaves through hpcnet0; on node1 its own name is the
    127.0.1.1 alias (as Debian writes /etc/hosts), and the one interface that is up wins."""
    code = ("from hpcdiff.distributed.netif import interface_towards as f; "
            "print(f('node1'), f('node2'), f('no-such-host.invalid'))")  # fmt: skip
    env = cluster.env(work / "rec" / "netif")
    for node in NODES:
        out = cluster.run(node, [sys.executable, "-c", code], env, work, work / "netif.log")
        assert out.split() == ["hpcnet0", "hpcnet0", "None"], (node, out)


def check_layout(work: Path, name: str, launcher: str) -> list[dict]:
    """Every rank found its node, local rank and rank 0's address and picked the node's
    interface by itself; returns the records (printed for docs/launching.md's table)."""
    records = read_records(work / "rec" / name, 4)
    assert [r["host"] for r in records] == ["node1", "node1", "node2", "node2"]
    for rank, rec in enumerate(records):
        env = rec["env"]
        assert (env["rank"], env["world_size"], env["launcher"]) == (rank, 4, launcher)
        assert (env["local_rank"], env["local_world_size"]) == (rank % 2, 2)
        assert env["master_addr"] in ("node1", "10.216.16.1"), env
        assert env["master_port"] == records[0]["env"]["master_port"]
        assert rec["exported_ifname"] == IFNAME
        print(name, rank, rec["host"], sorted(rec["read"]))
    return records


def test_sbatch_two_nodes(cluster, work, reference):
    env = cluster.env(work / "rec" / "sbatch")
    log = work / "sbatch.out"
    submit = subprocess.run(
        ["sbatch", "--parsable", "-N", "2", "--ntasks-per-node", "2", "--gpus-per-node=0",
         "--cpus-per-task=1", "--time=10", f"--chdir={work}", f"--output={log}",
         LAUNCHERS / "sbatch.sh", *train("sbatch")],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    job = submit.stdout.strip().split(";")[0]
    state, deadline = "", time.monotonic() + 240
    while state not in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"):
        assert time.monotonic() < deadline, f"job {job} still {state}"
        time.sleep(0.5)
        show = subprocess.run(["scontrol", "-o", "show", "job", job], env=env,
                              capture_output=True, text=True).stdout  # fmt: skip
        state = dict(f.split("=", 1) for f in show.split() if "=" in f).get("JobState", "")
    assert state == "COMPLETED", log.read_text()[-4000:]
    assert "4 tasks on node[1-2]" in log.read_text()
    assert losses(work / "runs" / "sbatch") == {s: reference[s] for s in range(1, STEPS + 1)}
    records = check_layout(work, "sbatch", "slurm")
    assert [r["read"]["SLURM_STEP_NODELIST"] for r in records] == ["node[1-2]"] * 4


@pytest.mark.parametrize(
    "mpi, mpirun, args",
    [("openmpi", "/usr/bin/mpirun", OPENMPI_ARGS), ("mpich", str(BIN / "mpiexec"), MPICH_ARGS)],
)
def test_mpi_two_nodes_tiled_training(cluster, work, tiled_reference, mpi, mpirun, args):
    """launchers/mpirun.sh on node1 starts node2's ranks through the rsh-style agent; the
    domain is split in 2 x 2 tiles, so every training step exchanges tiles across nodes."""
    name = f"mpi_{mpi}"
    env = cluster.env(work / "rec" / name, NP="4", MPIRUN=mpirun, MPIRUN_ARGS=args)
    cmd = [LAUNCHERS / "mpirun.sh", *train(name, "domain.grid=[2, 2]")]
    cluster.run("node1", cmd, env, work, work / f"{name}.log")
    assert losses(work / "runs" / name) == tiled_reference
    check_layout(work, name, mpi)


def test_tiled_sampling_two_nodes_equals_one_process(cluster, work, reference):
    """`hpcdiff sample` with sample.domain_grid=[2, 2] on 2 nodes x 2 ranks (MPICH) writes the
    samples one process writes. Tiles batch other patches together than one process does, so
    float32 sums differ in order; the 3 solver steps of an almost untrained model amplify that
    to 1.0e-5 of the field's largest value (measured: one v10 point of 2048), hence 1e-4."""
    samples = work / "runs" / "ref" / "samples" / "samples.nc"
    env = cluster.env(work / "rec" / "sample1")
    cluster.run("node1", [sys.executable, "-m", "hpcdiff", "sample", "runs/ref"], env, work,
                work / "sample1.log")  # fmt: skip
    whole = xr.load_dataset(samples)
    samples.unlink()
    env = cluster.env(work / "rec" / "sample4", NP="4", MPIRUN=str(BIN / "mpiexec"),
                      MPIRUN_ARGS=MPICH_ARGS)  # fmt: skip
    cmd = [LAUNCHERS / "mpirun.sh", "sample", "runs/ref", "sample.domain_grid=[2, 2]"]
    cluster.run("node1", cmd, env, work, work / "sample4.log")
    tiled = xr.load_dataset(samples)
    check_layout(work, "sample4", "mpich")
    assert sorted(tiled.data_vars) == sorted(whole.data_vars)
    for name, value in whole.data_vars.items():
        scale = float(np.nanmax(np.abs(value.values)))
        np.testing.assert_allclose(tiled[name].values, value.values, rtol=0, atol=1e-4 * scale,
                                   err_msg=name)  # fmt: skip
    assert not np.allclose(whole["t2m"].values[0], whole["t2m"].values[1])  # members differ


def test_node_failure_names_the_node_then_the_run_resumes(cluster, work, reference):
    """torchrun --nnodes 2 --nproc-per-node 2 (c10d rendezvous on node1) gives the 4-rank
    one-node losses and layout; then kill every process of node2's launch mid-run: node1's
    ranks exit within dist.timeout_s
    naming node2's ranks; the same command on the remaining node (its 2 ranks) resumes from
    the newest checkpoint, resharded from 4 ranks."""
    run = work / "runs" / "fail"
    args = train("fail", "run.steps=200", f"dist.timeout_s={TIMEOUT_S}")
    procs, logs = torchrun_nodes(cluster, work, "fail", args)
    deadline = time.monotonic() + 240
    while _last_step(run) < 3:  # step 2's checkpoint is written before step 3 starts
        assert time.monotonic() < deadline and procs[0].poll() is None, logs[0].read_text()
        time.sleep(0.1)
    # node2 fails: SIGKILL its torchrun agent and both ranks (torchrun puts each rank in a
    # session of its own, so the launch's process group is not enough)
    subprocess.run([SCRIPT, "kill", "node2"], check=True)
    killed = time.monotonic()
    named, took = [], None
    while procs[0].poll() is None or took is None:
        if not named:  # the first error line of a node1 rank that names node2's ranks
            lines = logs[0].read_text().splitlines()
            named = [x for x in lines if "error:" in x and "(node2 pid" in x]
            took = time.monotonic() - killed if named else None
        if time.monotonic() - killed > 4 * TIMEOUT_S or (took is None and procs[0].poll()):
            kill_group(procs[0])
            pytest.fail(f"node1 did not report node2's death: {logs[0].read_text()[-4000:]}")
        time.sleep(0.1)
    procs[1].wait(timeout=10)
    assert procs[0].returncode != 0
    assert took < TIMEOUT_S, (took, named)
    assert any(f"rank {r} (node2 pid" in line for line in named for r in (2, 3))
    print(f"node1 named node2 {took:.1f} s after the kill, exited after "
          f"{time.monotonic() - killed:.1f} s:", *named, sep="\n")  # fmt: skip
    done = max(losses(run))
    assert done < REF_STEPS - 1, f"the failing run got to step {done} before the kill"
    # Resume on node1 alone with its 2 ranks, up to the reference's length: the checkpoint of
    # 4 ranks is resharded (weights, Adam state and EMA exactly; per-rank noise streams anew).
    env = cluster.env(work / "rec" / "resume", NPROC_PER_NODE="2")
    cmd = [LAUNCHERS / "torchrun.sh", *train("fail", f"run.steps={REF_STEPS}")]
    out = cluster.run("node1", cmd, env, work, work / "resume.log")
    start = int(out.split('"start_step": ')[1].split(",")[0])
    assert 2 <= start <= done and start % 2 == 0  # the newest checkpoint before the kill
    check_layout(work, "fail", "torchrun")  # the 2-node torchrun launch (c10d) before the kill
    assert "written by 4 ranks at ZeRO-" in (run / "logs" / "rank00000.log").read_text()
    after = losses(run)
    assert sorted(after) == sorted(reference)
    assert all(after[s] == reference[s] for s in after if s <= start)
    assert all(0 < after[s] < 2 * reference[s] for s in after if s > start)  # other noise


def _last_step(run: Path) -> int:
    try:
        return max(losses(run), default=0)
    except (FileNotFoundError, ValueError):  # not written yet, or a line half written
        return 0
