"""Which interface hpcdiff names for gloo and NCCL; the multi-node case itself (routes between
nodes, a loopback alias of the node's own name) runs on real nodes in tests/cluster."""

import psutil

from hpcdiff.distributed.env import DistEnv
from hpcdiff.distributed.netif import socket_interface_env

TWO_NODES = DistEnv(rank=2, world_size=4, local_rank=0, local_world_size=2, master_addr="127.0.0.1")


def test_one_node_jobs_are_left_alone():
    one_node = DistEnv(rank=1, world_size=4, local_rank=1, local_world_size=4, master_addr="x")
    assert socket_interface_env(one_node, {}) == {}  # no lookup of "x" either


def test_variables_the_user_set_win():
    user = {"GLOO_SOCKET_IFNAME": "ib0", "NCCL_SOCKET_IFNAME": "ib"}
    assert socket_interface_env(TWO_NODES, user) == {}
    only_nccl = socket_interface_env(TWO_NODES, {"GLOO_SOCKET_IFNAME": "ib0"})
    assert "GLOO_SOCKET_IFNAME" not in only_nccl
    # rank 0 here is a loopback address: the one non-loopback interface that is up, if unique
    up = [n for n, s in psutil.net_if_stats().items() if s.isup and n != "lo"]
    if only_nccl:
        name = only_nccl["NCCL_SOCKET_IFNAME"]
        assert name.startswith("=") and name[1:] in up
