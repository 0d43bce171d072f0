"""Launcher-agnostic process layout: rank, world size, local rank and rendezvous address.

One resolver for every way a job starts: explicit ``HPCDIFF_*`` overrides, torchrun, an ``srun``
step (a plain ``sbatch`` / ``salloc`` shell without ``srun`` is one process), Open MPI, MPICH /
Intel MPI (PMI), PMIx and MVAPICH. The rendezvous address comes from ``MASTER_ADDR``, else the
first host of the Slurm node list, else an MPI broadcast from rank 0, else localhost. On a job
spanning several nodes, :mod:`hpcdiff.distributed.netif` picks the network interface for gloo
and NCCL.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass

_OVERRIDE = ("HPCDIFF_RANK", "HPCDIFF_WORLD_SIZE", "HPCDIFF_LOCAL_RANK", "HPCDIFF_LOCAL_WORLD_SIZE")
DEFAULT_PORT = 29500


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job, and where rank 0 listens for the rendezvous."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = DEFAULT_PORT
    launcher: str = "none"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def exported(self) -> dict[str, str]:
        """The torchrun-style variables (RANK, WORLD_SIZE, ...) describing this layout."""
        return {
            "RANK": str(self.rank),
            "WORLD_SIZE": str(self.world_size),
            "LOCAL_RANK": str(self.local_rank),
            "LOCAL_WORLD_SIZE": str(self.local_world_size),
            "MASTER_ADDR": self.master_addr,
            "MASTER_PORT": str(self.master_port),
        }


@dataclass(frozen=True)
class _Source:
    """Names of the variables one launcher sets (``None``: it sets no such variable)."""

    launcher: str
    rank: str
    size: str | None
    local_rank: str | None
    local_size: str | None


# Priority order: explicit overrides, then torchrun (often nested inside srun or mpirun, so it
# wins over them), then the MPI launchers, then an srun step (also under `srun --mpi=pmix`).
_SOURCES = (
    _Source("hpcdiff", *_OVERRIDE),
    _Source("torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"),
    _Source(
        "openmpi",
        "OMPI_COMM_WORLD_RANK",
        "OMPI_COMM_WORLD_SIZE",
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "OMPI_COMM_WORLD_LOCAL_SIZE",
    ),
    _Source(
        "mvapich",
        "MV2_COMM_WORLD_RANK",
        "MV2_COMM_WORLD_SIZE",
        "MV2_COMM_WORLD_LOCAL_RANK",
        "MV2_COMM_WORLD_LOCAL_SIZE",
    ),
    _Source("mpich", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"),
    _Source("slurm", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID", None),
    _Source("pmix", "PMIX_RANK", None, None, None),  # PMIx alone gives no size: ask MPI
)
_MPI = {"openmpi", "mvapich", "mpich", "pmix"}


def _int(environ: Mapping[str, str], name: str) -> int:
    value = environ[name]
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def expand_hostlist(hostlist: str) -> list[str]:
    """Expand Slurm hostlist syntax: ``nid[001-003,010]`` -> nid001, nid002, nid003, nid010.

    >>> expand_hostlist("a[1-2]-ib,b3")
    ['a1-ib', 'a2-ib', 'b3']
    >>> expand_hostlist("n[08-10]")
    ['n08', 'n09', 'n10']
    """
    hosts: list[str] = []
    for item in _split_top_level(hostlist):
        hosts.extend(_expand_item(item, hostlist))
    return hosts


def _split_top_level(text: str) -> list[str]:
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if depth not in (0, 1):
            raise ValueError(f"malformed hostlist {text!r}: unbalanced brackets")
        if ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    if depth != 0:
        raise ValueError(f"malformed hostlist {text!r}: unbalanced brackets")
    items.append(text[start:])
    return [item.strip() for item in items if item.strip()]


def _expand_item(item: str, whole: str) -> list[str]:
    match = re.search(r"\[([^\]]*)\]", item)
    if match is None:
        return [item]
    head, tail = item[: match.start()], item[match.end() :]
    out: list[str] = []
    for value in _expand_range_list(match.group(1), whole):
        out.extend(head + value + rest for rest in _expand_item(tail, whole))
    return out


def _expand_range_list(ranges: str, whole: str) -> list[str]:
    values: list[str] = []
    for part in ranges.split(","):
        lo, sep, hi = part.strip().partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f"malformed hostlist {whole!r}: bad range {part!r}")
        width = len(lo)
        stop = int(hi) if sep else int(lo)
        if stop < int(lo):
            raise ValueError(f"malformed hostlist {whole!r}: descending range {part!r}")
        values.extend(str(n).zfill(width) for n in range(int(lo), stop + 1))
    return values


def expand_tasks_per_node(spec: str) -> list[int]:
    """Expand Slurm's compressed task counts: ``2(x3),1`` -> [2, 2, 2, 1].

    >>> expand_tasks_per_node("2(x3),1")
    [2, 2, 2, 1]
    """
    counts = []
    for part in spec.split(","):
        match = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if match is None:
            raise ValueError(f"malformed Slurm tasks-per-node value {spec!r}")
        counts.extend([int(match.group(1))] * int(match.group(2) or 1))
    return counts


def _present(environ: Mapping[str, str], source: _Source) -> bool:
    if source.launcher == "slurm":  # only an srun step; a batch or salloc shell is one process
        return "SLURM_PROCID" in environ and "SLURM_STEP_ID" in environ
    return source.rank in environ


def _read(environ: Mapping[str, str], source: _Source) -> dict[str, int | None]:
    """Rank and sizes a source reports (``None`` where it sets no variable)."""
    size_var = source.size
    if source.launcher == "slurm" and size_var not in environ:
        size_var = "SLURM_NTASKS"
    if size_var is not None and size_var not in environ:
        raise ValueError(
            f"{source.launcher} environment is incomplete: {source.rank} is set but "
            f"{size_var} is not"
        )
    out = {"rank": _int(environ, source.rank), "size": None, "local_rank": None, "local_size": None}
    if size_var is not None:
        out["size"] = _int(environ, size_var)
    for key in ("local_rank", "local_size"):
        name = getattr(source, key)
        if name is not None and name in environ:
            out[key] = _int(environ, name)
    if source.launcher == "slurm":
        out["local_size"] = _slurm_local_size(environ)
    return out


def _slurm_local_size(environ: Mapping[str, str]) -> int | None:
    spec = environ.get("SLURM_STEP_TASKS_PER_NODE") or environ.get("SLURM_TASKS_PER_NODE")
    if not spec:
        return None
    counts = expand_tasks_per_node(spec)
    node = 0
    nodelist = environ.get("SLURM_STEP_NODELIST")
    name = environ.get("SLURMD_NODENAME")
    if nodelist and name and name in (hosts := expand_hostlist(nodelist)):
        node = hosts.index(name)
    elif "SLURM_NODEID" in environ:
        node = _int(environ, "SLURM_NODEID")
    if node >= len(counts):
        raise ValueError(f"SLURM node index {node} is outside tasks-per-node {spec!r}")
    return counts[node]


def _names(source: _Source) -> str:
    return "/".join(n for n in (source.rank, source.size) if n)


def _check_consistent(environ: Mapping[str, str], primary: _Source, layout: dict) -> None:
    """Raise when two launchers that describe the same world disagree about it."""
    if primary.launcher in ("hpcdiff", "torchrun"):
        return  # an explicit override or a nested torchrun legitimately differs from its parent
    for other in _SOURCES:
        if other is primary or other.size is None or not _present(environ, other):
            continue
        theirs = _read(environ, other)
        same_family = other.launcher in _MPI and primary.launcher in _MPI
        if theirs["size"] != layout["size"] and not same_family:
            continue
        if (theirs["rank"], theirs["size"]) != (layout["rank"], layout["size"]):
            raise ValueError(
                f"conflicting launcher environments: {_names(primary)}="
                f"{layout['rank']}/{layout['size']} ({primary.launcher}) but {_names(other)}="
                f"{theirs['rank']}/{theirs['size']} ({other.launcher}); unset the stale "
                "variables or set HPCDIFF_RANK/HPCDIFF_WORLD_SIZE explicitly"
            )


def _validate_world(source: _Source, layout: dict) -> None:
    rank, size = layout["rank"], layout["size"]
    if rank < 0 or (size is not None and (size < 1 or rank >= size)):
        raise ValueError(
            f"inconsistent {source.launcher} environment: {_names(source)}={rank}/{size} "
            "(need 0 <= rank < world size)"
        )


def _validate_local(source: _Source, layout: dict) -> None:
    local_rank, local_size = layout["local_rank"], layout["local_size"]
    if local_rank is None or local_size is None:
        raise ValueError(
            f"the {source.launcher} environment gives no local rank / local world size; set "
            "HPCDIFF_LOCAL_RANK and HPCDIFF_LOCAL_WORLD_SIZE"
        )
    if local_size < 1 or not 0 <= local_rank < local_size or local_size > layout["size"]:
        names = "/".join(n for n in (source.local_rank, source.local_size) if n)
        raise ValueError(
            f"inconsistent {source.launcher} environment: local rank {local_rank} of "
            f"{local_size} ({names or 'local variables'}) in a world of {layout['size']}"
        )


def _layout(environ: Mapping[str, str]) -> tuple[_Source | None, dict]:
    present = [s for s in _SOURCES if _present(environ, s)]
    if not present:
        return None, {"rank": 0, "size": 1, "local_rank": 0, "local_size": 1}
    primary = present[0]
    layout = _read(environ, primary)
    _check_consistent(environ, primary, layout)
    for other in present[1:]:  # borrow local info from a launcher describing the same world
        theirs = _read(environ, other)
        if (theirs["rank"], theirs["size"]) == (layout["rank"], layout["size"]):
            for key in ("local_rank", "local_size"):
                layout[key] = layout[key] if layout[key] is not None else theirs[key]
    return primary, layout


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def _slurm_port(environ: Mapping[str, str]) -> int:
    """A port all ranks of a Slurm step agree on without talking: below the ephemeral range."""
    job = _int(environ, "SLURM_JOB_ID") if "SLURM_JOB_ID" in environ else 0
    step = environ.get("SLURM_STEP_ID", "0")
    step_n = int(step) if step.isdigit() else 0
    return 15000 + (job * 8 + step_n) % 16000


def _explicit(environ: Mapping[str, str], name: str) -> str | None:
    return environ.get(f"HPCDIFF_{name}") or environ.get(name)


def _mpi_rendezvous(environ: Mapping[str, str], layout: dict, need_addr: bool) -> dict:
    """Ask MPI (mpi4py) for what the variables lack; rank 0 broadcasts its address and a port."""
    if "OMPI_COMM_WORLD_SIZE" in environ and not (
        os.environ.get("MPI4PY_MPIABI") or os.environ.get("MPI4PY_LIBMPI")
    ):
        os.environ["MPI4PY_MPIABI"] = "openmpi"  # a venv's mpich wheel would win otherwise
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    out = dict(layout, size=layout["size"] or comm.Get_size())
    if (comm.Get_rank(), comm.Get_size()) != (out["rank"], out["size"]):
        raise RuntimeError(
            f"mpi4py sees rank {comm.Get_rank()} of {comm.Get_size()} but the launcher "
            f"environment says {out['rank']} of {out['size']}: mpi4py loaded a different "
            "MPI than the launcher's (set MPI4PY_LIBMPI to the launcher's libmpi)"
        )
    if out["local_rank"] is None or out["local_size"] is None:
        node = comm.Split_type(MPI.COMM_TYPE_SHARED)
        out["local_rank"], out["local_size"] = node.Get_rank(), node.Get_size()
        node.Free()
    out["addr"] = out["port"] = None
    if need_addr:
        mine = None
        if comm.Get_rank() == 0:
            single_node = out["local_size"] == out["size"]
            mine = ("127.0.0.1" if single_node else socket.getfqdn(), _free_port())
        out["addr"], out["port"] = comm.bcast(mine, root=0)
    return out


def _rendezvous(environ: Mapping[str, str], source: _Source, layout: dict) -> tuple:
    addr, port = _explicit(environ, "MASTER_ADDR"), _explicit(environ, "MASTER_PORT")
    in_slurm = "SLURM_JOB_ID" in environ
    multi = layout["size"] is None or layout["size"] > 1
    if addr is None and in_slurm and multi:
        nodes = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST")
        addr = expand_hostlist(nodes)[0] if nodes else None
    incomplete = None in (layout["size"], layout["local_rank"], layout["local_size"])
    if source.launcher in _MPI and multi and (addr is None or incomplete):
        layout = _mpi_rendezvous(environ, layout, need_addr=addr is None)
        addr, port = addr or layout["addr"], port or layout["port"]
    if port is None and layout["size"] > 1:
        port = _slurm_port(environ) if in_slurm else DEFAULT_PORT
    try:
        port_n = int(port) if port is not None else _free_port()
    except ValueError:
        raise ValueError(f"MASTER_PORT={port!r} is not an integer") from None
    return addr or "127.0.0.1", port_n, layout


def resolve_env(environ: Mapping[str, str] | None = None) -> DistEnv:
    """Resolve this process's :class:`DistEnv` from the launcher's environment variables.

    >>> resolve_env({"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2",
    ...              "OMPI_COMM_WORLD_LOCAL_RANK": "1", "OMPI_COMM_WORLD_LOCAL_SIZE": "2",
    ...              "MASTER_ADDR": "node7", "MASTER_PORT": "1234"})
    DistEnv(rank=1, world_size=2, local_rank=1, local_world_size=2, master_addr='node7', \
master_port=1234, launcher='openmpi')
    """
    environ = os.environ if environ is None else environ
    source, layout = _layout(environ)
    if source is None:  # one process; inside a batch/salloc shell that did not call srun
        launcher = "slurm-batch" if "SLURM_JOB_ID" in environ else "none"
        return DistEnv(master_port=_free_port(), launcher=launcher)
    _validate_world(source, layout)
    addr, port, layout = _rendezvous(environ, source, layout)
    if layout["size"] == 1:
        layout.update(local_rank=0, local_size=1)
    _validate_local(source, layout)
    return DistEnv(
        rank=layout["rank"],
        world_size=layout["size"],
        local_rank=layout["local_rank"],
        local_world_size=layout["local_size"],
        master_addr=addr,
        master_port=port,
        launcher=source.launcher,
    )
