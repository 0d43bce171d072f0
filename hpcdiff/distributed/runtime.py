"""Start and stop the process group: device binding, backend choice, timeout and watchdog."""

from __future__ import annotations

import atexit
import logging
import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from hpcdiff.distributed.config import DistConfig
from hpcdiff.distributed.env import DistEnv, resolve_env
from hpcdiff.distributed.netif import socket_interface_env
from hpcdiff.distributed.watchdog import Watchdog

_STORE_PREFIX = "hpcdiff"


@dataclass
class DistContext:
    """The started process group of this rank: layout, device, backend and its watchdog."""

    env: DistEnv
    device: torch.device
    backend: str
    timeout_s: float
    watchdog: Watchdog | None = None
    previous_excepthook: Any = None
    hosts_store: bool = False


_CONTEXT: DistContext | None = None


def select_device(env: DistEnv, device: str = "auto") -> torch.device:
    """Bind this rank to CUDA device ``local_rank % device_count`` (as CUDA_VISIBLE_DEVICES
    numbers them), or to the CPU when there is none and ``device`` is ``auto``."""
    if device == "cpu":
        return torch.device("cpu")
    count = torch.cuda.device_count()
    if count == 0:
        if device == "cuda":
            visible = os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")
            raise RuntimeError(
                f"dist.device='cuda' but no CUDA device is visible "
                f"(CUDA_VISIBLE_DEVICES={visible}, torch {torch.__version__})"
            )
        return torch.device("cpu")
    index = env.local_rank % count
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def default_backend(device: torch.device) -> str:
    """nccl for CUDA devices, gloo for the CPU."""
    return "nccl" if device.type == "cuda" else "gloo"


def _create_store(env: DistEnv, timeout: timedelta, host: bool) -> dist.Store:
    try:
        store = dist.TCPStore(
            env.master_addr,
            env.master_port,
            env.world_size,
            is_master=host,
            timeout=timeout,
            wait_for_workers=False,
        )
    except (RuntimeError, dist.DistError) as err:
        action = "listen on" if host else "reach rank 0 at"
        raise RuntimeError(
            f"rank {env.rank} ({env.launcher}) could not {action} "
            f"{env.master_addr}:{env.master_port}: {err}; check MASTER_ADDR/MASTER_PORT "
            "(or HPCDIFF_MASTER_ADDR/HPCDIFF_MASTER_PORT)"
        ) from err
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"{_STORE_PREFIX}/{attempt}", store)


def init_distributed(cfg: DistConfig | None = None, env: DistEnv | None = None) -> DistContext:
    """Resolve the launcher environment, bind the device and start the process group.

    Exports RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT (what
    DeepSpeed and most libraries read) and, with ``cfg.heartbeat``, starts the watchdog that
    makes every rank exit with an error naming a rank silent for ``cfg.timeout_s``.
    """
    global _CONTEXT
    if _CONTEXT is not None:
        return _CONTEXT
    cfg = cfg or DistConfig()
    env = env or resolve_env()
    os.environ.update(env.exported())
    os.environ.update(socket_interface_env(env))  # several nodes: the interface to rank 0
    device = select_device(env, cfg.device)
    backend = default_backend(device) if cfg.backend == "auto" else cfg.backend
    timeout = timedelta(seconds=cfg.timeout_s)
    agent_hosts = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"  # torchrun's store
    hosts_store = env.rank == 0 and not agent_hosts
    store = _create_store(env, timeout, host=hosts_store)
    dist.init_process_group(
        backend,
        store=store,
        rank=env.rank,
        world_size=env.world_size,
        timeout=timeout,
        device_id=device if device.type == "cuda" else None,
    )
    watchdog, previous_hook = None, None
    if cfg.heartbeat and env.world_size > 1:
        own = _create_store(env, timeout, host=False)  # own connection for its own thread
        watchdog_store = dist.PrefixStore("watchdog", own)
        where = f"{env.master_addr}:{env.master_port}"
        watchdog = Watchdog(watchdog_store, env.rank, env.world_size, cfg.timeout_s, where)
        watchdog.start()
        previous_hook = _install_excepthook(watchdog)
        atexit.register(_leave_at_exit)
    _CONTEXT = DistContext(
        env, device, backend, cfg.timeout_s, watchdog, previous_hook, hosts_store
    )
    return _CONTEXT


def _leave_at_exit() -> None:
    """Safety net for a program that ends without :func:`shutdown`: say goodbye to the
    watchdogs of the other ranks (the store's host waits for theirs) instead of vanishing."""
    if _CONTEXT is not None and _CONTEXT.watchdog is not None:
        _CONTEXT.watchdog.stop(wait_for_peers=_CONTEXT.hosts_store)


def _install_excepthook(watchdog: Watchdog) -> Any:
    """After the usual traceback, name the failing rank to the others (see Watchdog) and exit
    at once with 1, as Python would. Not through the interpreter's normal exit: its atexit
    hooks include mpi4py's MPI_Finalize, which under Open MPI waits for every rank and so
    hangs for good next to a hung one (seen when gloo's timeout beat the watchdog's)."""
    previous = sys.excepthook

    def hook(exc_type, exc, tb) -> None:
        previous(exc_type, exc, tb)
        watchdog.report_failure(exc)
        logging.shutdown()  # flush and close the rank's log file
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(1)

    sys.excepthook = hook
    return previous


def shutdown() -> None:
    """Leave the process group cleanly: stop the heartbeat, wait for every rank, tear down.
    Every rank calls it at the end of the program (collective)."""
    global _CONTEXT
    ctx, _CONTEXT = _CONTEXT, None
    if ctx is None or not dist.is_initialized():
        return
    if ctx.watchdog is not None:
        ctx.watchdog.stop()
        sys.excepthook = ctx.previous_excepthook
    dist.barrier()
    dist.destroy_process_group()
