"""The network interface of a job spanning several nodes, for gloo and NCCL.

gloo binds the address its host name resolves to and falls back to loopback when that name is
unresolvable or a loopback alias (Debian's ``127.0.1.1 host`` line); ranks on other nodes then
cannot connect. NCCL guesses too. :func:`socket_interface_env` names the interface the kernel
routes rank 0's address through, unless the user set ``GLOO_SOCKET_IFNAME`` /
``NCCL_SOCKET_IFNAME`` already.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Mapping

from hpcdiff.distributed.env import DistEnv

_IFNAME_VARS = ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")


def socket_interface_env(env: DistEnv, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``GLOO_SOCKET_IFNAME`` / ``NCCL_SOCKET_IFNAME`` to export before the process group starts.

    Only the ones the user left unset, only when the job spans nodes (local world size < world
    size): the interface the kernel routes rank 0's address through; ``{}`` when that cannot be
    told (see :func:`interface_towards`).
    """
    environ = os.environ if environ is None else environ
    unset = [name for name in _IFNAME_VARS if not environ.get(name)]
    if not unset or env.local_world_size >= env.world_size:
        return {}
    name = interface_towards(env.master_addr)
    if name is None:
        return {}
    values = {"GLOO_SOCKET_IFNAME": name, "NCCL_SOCKET_IFNAME": f"={name}"}  # "=": exact name
    return {key: values[key] for key in unset}


def interface_towards(host: str) -> str | None:
    """Name of the interface whose IPv4 address the kernel uses to reach ``host``.

    When ``host`` is this machine under a loopback alias (rank 0 resolving its own name to
    127.0.1.1), the answer is the only non-loopback interface that is up, if there is exactly
    one; ``None`` when the host does not resolve or the choice is ambiguous.
    """
    import psutil  # only multi-node jobs get here

    try:
        addr = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_DGRAM)[0][4][0]
    except (OSError, IndexError):
        return None
    addrs = {
        name: [a.address for a in entries if a.family == socket.AF_INET]
        for name, entries in psutil.net_if_addrs().items()
    }
    if not ipaddress.ip_address(addr).is_loopback:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                sock.connect((addr, 9))  # a UDP connect only picks the route; nothing is sent
            except OSError:
                return None
            local = sock.getsockname()[0]
        if not ipaddress.ip_address(local).is_loopback:
            return next((name for name, ips in addrs.items() if local in ips), None)
    stats = psutil.net_if_stats()
    candidates = [
        name
        for name, ips in addrs.items()
        if name in stats
        and stats[name].isup
        and any(not ipaddress.ip_address(ip).is_loopback for ip in ips)
    ]
    return candidates[0] if len(candidates) == 1 else None
