"""Launcher discovery from the variables each launcher really sets (as measured on this machine:
torchrun, srun, sbatch, Open MPI's mpirun, the MPICH wheel's mpiexec), and its error messages."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from hpcdiff.distributed.env import (
    DistEnv,
    expand_hostlist,
    expand_tasks_per_node,
    resolve_env,
)
from hpcdiff.distributed.runtime import default_backend, select_device


def _local(**kw) -> dict[str, str]:
    return {k: str(v) for k, v in kw.items()}


TORCHRUN = _local(
    RANK=3, WORLD_SIZE=4, LOCAL_RANK=1, LOCAL_WORLD_SIZE=2, MASTER_ADDR="n0", MASTER_PORT=2345
)
SRUN_RANK3 = _local(
    SLURM_JOB_ID=77,
    SLURM_STEP_ID=0,
    SLURM_PROCID=3,
    SLURM_NTASKS=4,
    SLURM_STEP_NUM_TASKS=4,
    SLURM_LOCALID=1,
    SLURM_NODEID=1,
    SLURM_STEP_TASKS_PER_NODE="2(x2)",
    SLURM_STEP_NODELIST="nid[007-008]",
    SLURM_JOB_NODELIST="nid[007-008]",
    SLURMD_NODENAME="nid008",
)
SBATCH_SHELL = _local(
    SLURM_JOB_ID=78,
    SLURM_PROCID=0,
    SLURM_NTASKS=4,
    SLURM_LOCALID=0,
    SLURM_NODEID=0,
    SLURM_TASKS_PER_NODE="4",
    SLURM_JOB_NODELIST="nid001",
)
OPENMPI = _local(
    OMPI_COMM_WORLD_RANK=1,
    OMPI_COMM_WORLD_SIZE=2,
    OMPI_COMM_WORLD_LOCAL_RANK=1,
    OMPI_COMM_WORLD_LOCAL_SIZE=2,
    PMIX_RANK=1,
    MASTER_ADDR="127.0.0.1",
)
MPICH = _local(PMI_RANK=2, PMI_SIZE=3, MPI_LOCALRANKID=0, MPI_LOCALNRANKS=1, MASTER_ADDR="h2")
MVAPICH = _local(
    MV2_COMM_WORLD_RANK=1,
    MV2_COMM_WORLD_SIZE=2,
    MV2_COMM_WORLD_LOCAL_RANK=1,
    MV2_COMM_WORLD_LOCAL_SIZE=2,
    MASTER_ADDR="h1",
    MASTER_PORT=5000,
)


def test_torchrun_variables():
    env = resolve_env(TORCHRUN)
    assert env == DistEnv(3, 4, 1, 2, "n0", 2345, "torchrun")
    assert env.exported() == {
        "RANK": "3",
        "WORLD_SIZE": "4",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "2",
        "MASTER_ADDR": "n0",
        "MASTER_PORT": "2345",
    }


def test_srun_step_uses_the_step_layout_and_first_node():
    env = resolve_env(SRUN_RANK3)
    assert (env.rank, env.world_size, env.local_rank, env.local_world_size) == (3, 4, 1, 2)
    assert (env.master_addr, env.launcher) == ("nid007", "slurm")
    rank0 = resolve_env(
        {**SRUN_RANK3, "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURMD_NODENAME": "nid007"}
    )
    assert rank0.master_port == env.master_port  # agreed on without communication
    assert 1024 < env.master_port < 32768  # below Linux's ephemeral port range


def test_sbatch_shell_without_srun_is_a_single_process():
    env = resolve_env(SBATCH_SHELL)
    assert (env.rank, env.world_size, env.local_world_size) == (0, 1, 1)
    assert env.launcher == "slurm-batch"


def test_mpi_launchers():
    assert resolve_env(OPENMPI) == DistEnv(1, 2, 1, 2, "127.0.0.1", 29500, "openmpi")
    assert resolve_env(MPICH) == DistEnv(2, 3, 0, 1, "h2", 29500, "mpich")
    assert resolve_env(MVAPICH) == DistEnv(1, 2, 1, 2, "h1", 5000, "mvapich")


def test_srun_with_pmi2_agrees_with_mpich_variables():
    both = {**SRUN_RANK3, "PMI_RANK": "3", "PMI_SIZE": "4"}  # srun --mpi=pmi2 sets both
    env = resolve_env(both)
    assert (env.launcher, env.rank, env.local_rank, env.local_world_size) == ("mpich", 3, 1, 2)
    assert env.master_addr == "nid007"


def test_explicit_overrides_win():
    over = _local(
        HPCDIFF_RANK=0,
        HPCDIFF_WORLD_SIZE=2,
        HPCDIFF_LOCAL_RANK=0,
        HPCDIFF_LOCAL_WORLD_SIZE=2,
        HPCDIFF_MASTER_ADDR="a",
        HPCDIFF_MASTER_PORT=7,
    )
    assert resolve_env({**TORCHRUN, **over}) == DistEnv(0, 2, 0, 2, "a", 7, "hpcdiff")


def test_torchrun_inside_srun_is_torchrun():
    outer = {**SRUN_RANK3, "SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "2"}
    assert resolve_env({**outer, **TORCHRUN}).launcher == "torchrun"


def test_no_launcher_is_one_local_process():
    env = resolve_env({})
    assert (env.rank, env.world_size, env.master_addr, env.launcher) == (0, 1, "127.0.0.1", "none")


@pytest.mark.parametrize(
    ("environ", "names"),
    [
        ({**TORCHRUN, "RANK": "4"}, ["RANK/WORLD_SIZE=4/4"]),
        ({"RANK": "0", "LOCAL_RANK": "0"}, ["RANK is set but WORLD_SIZE is not"]),
        ({**MPICH, "PMI_RANK": "two"}, ["PMI_RANK='two'"]),
        (
            {**OPENMPI, "PMI_RANK": "0", "PMI_SIZE": "2"},
            ["OMPI_COMM_WORLD_RANK/OMPI_COMM_WORLD_SIZE=1/2", "PMI_RANK/PMI_SIZE=0/2"],
        ),
        ({**OPENMPI, "PMI_RANK": "1", "PMI_SIZE": "4"}, ["conflicting", "PMI_SIZE=1/4"]),
        ({**TORCHRUN, "LOCAL_RANK": "2"}, ["local rank 2 of 2", "LOCAL_RANK/LOCAL_WORLD_SIZE"]),
        (_local(HPCDIFF_RANK=1, HPCDIFF_WORLD_SIZE=2), ["HPCDIFF_LOCAL_RANK"]),
        ({**TORCHRUN, "MASTER_PORT": "http"}, ["MASTER_PORT='http'"]),
    ],
)
def test_inconsistent_environments_name_the_variables(environ, names):
    with pytest.raises(ValueError) as err:
        resolve_env(environ)
    for name in names:
        assert name in str(err.value)


@pytest.mark.parametrize(
    ("hostlist", "hosts"),
    [
        ("nid[001-004,010]", ["nid001", "nid002", "nid003", "nid004", "nid010"]),
        ("a[1-2]-ib,b3", ["a1-ib", "a2-ib", "b3"]),
        ("n[08-10]", ["n08", "n09", "n10"]),
        ("r[1-2]n[1,3]", ["r1n1", "r1n3", "r2n1", "r2n3"]),
        ("localhost", ["localhost"]),
    ],
)
def test_hostlist_expansion(hostlist, hosts):
    assert expand_hostlist(hostlist) == hosts


@pytest.mark.parametrize("bad", ["nid[001-004", "nid]1[", "n[3-1]", "n[a-b]"])
def test_malformed_hostlists_are_rejected(bad):
    with pytest.raises(ValueError, match="hostlist"):
        expand_hostlist(bad)


def test_tasks_per_node_expansion():
    assert expand_tasks_per_node("2(x3),1") == [2, 2, 2, 1]
    with pytest.raises(ValueError, match="tasks-per-node"):
        expand_tasks_per_node("2(3)")


def test_pmix_alone_asks_mpi_for_the_world_size():
    code = (
        "from hpcdiff.distributed.env import resolve_env; "
        "e = resolve_env({'PMIX_RANK': '0'}); print(e.world_size, e.launcher)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "pmix"]  # a singleton MPI world


def test_cpu_binding_and_backend():
    env = resolve_env({})
    assert select_device(env, "cpu") == torch.device("cpu")
    if torch.cuda.device_count() == 0:
        assert select_device(env, "auto") == torch.device("cpu")
        with pytest.raises(RuntimeError, match="CUDA_VISIBLE_DEVICES"):
            select_device(env, "cuda")
    assert default_backend(torch.device("cpu")) == "gloo"
    assert default_backend(torch.device("cuda", 0)) == "nccl"
