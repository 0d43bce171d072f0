"""`python -m hpcdiff ...` that also writes down what hpcdiff read from the launcher.

The multi-node tests run it as ``HPCDIFF_SCRIPT``: it wraps the real
:func:`hpcdiff.distributed.env.resolve_env` with an environment that remembers every variable
the resolver found set, and writes ``rank<R>.json`` (host name, resolved layout, the variables,
and the GLOO/NCCL interface hpcdiff exports) into ``$NODERECORD_DIR``. Nothing is faked: the
real resolver runs on the real environment of each rank.
"""

from __future__ import annotations

import dataclasses
import json
import os
import runpy
import socket
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import hpcdiff.distributed.env as env_module
import hpcdiff.distributed.runtime as runtime
from hpcdiff.distributed.netif import socket_interface_env


class RecordingEnviron(Mapping):
    """A read-only view of an environment that records the variables looked up and found."""

    def __init__(self, base: Mapping[str, str]) -> None:
        self.base, self.read = base, {}

    def __getitem__(self, name: str) -> str:
        value = self.base[name]
        self.read[name] = value
        return value

    def __contains__(self, name: object) -> bool:
        found = name in self.base
        if found:
            self.read[name] = self.base[name]
        return found

    def __iter__(self) -> Iterator[str]:
        return iter(self.base)

    def __len__(self) -> int:
        return len(self.base)


_real_resolve = env_module.resolve_env


def _recording_resolve(environ: Mapping[str, str] | None = None) -> env_module.DistEnv:
    recorder = RecordingEnviron(os.environ if environ is None else environ)
    env = _real_resolve(recorder)
    record = {
        "host": socket.gethostname(),
        "env": dataclasses.asdict(env),
        "read": dict(sorted(recorder.read.items())),
        "exported_ifname": socket_interface_env(env),  # what init_distributed applies next
    }
    out = Path(os.environ["NODERECORD_DIR"]) / f"rank{env.rank}.json"
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(out)
    return env


if __name__ == "__main__":
    env_module.resolve_env = runtime.resolve_env = _recording_resolve
    sys.argv = ["hpcdiff", *sys.argv[1:]]
    runpy.run_module("hpcdiff", run_name="__main__", alter_sys=True)
