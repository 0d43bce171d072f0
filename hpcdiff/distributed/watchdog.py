"""Heartbeats through the rendezvous store, so a dead or hung rank makes the others exit naming it.

Every rank bumps its counter in the store each ``interval`` seconds and watches one peer (ring
order). A peer silent for ``timeout_s`` is declared dead: the detector publishes an abort message
and every rank exits with :data:`EXIT_PEER_FAILED` on its next beat, instead of blocking in a
collective forever. Losing the store itself means its host (rank 0 or torchrun's agent) died.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import Callable

import torch.distributed as dist

EXIT_PEER_FAILED = 17
_DONE = 1 << 40  # a finished rank sets its counter past this


def _is_comm_error(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, dist.DistError) or any(
        word in text for word in ("gloo", "NCCL", "Connection", "connection", "timed out")
    )


class Watchdog:
    """Background heartbeat of one rank; ``start`` after the process group, ``stop`` at the end."""

    def __init__(
        self, store: dist.Store, rank: int, world_size: int, timeout_s: float, where: str
    ) -> None:
        self.store, self.rank, self.world_size = store, rank, world_size
        self.timeout_s = timeout_s
        self.interval = min(1.0, timeout_s / 10)
        self.where = where  # "addr:port" of the store, for messages
        self.peer = (rank + 1) % world_size
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hpcdiff-watchdog", daemon=True)
        self._failed = False
        self.exit: Callable[[int], None] = os._exit

    def start(self) -> None:
        self.store.set(f"host/{self.rank}", f"{socket.gethostname()} pid {os.getpid()}")
        self.store.add(f"beat/{self.rank}", 1)
        self._thread.start()

    def stop(self, wait_for_peers: bool = False) -> None:
        """Tell the peers this rank finished on purpose, then end the thread. The rank hosting
        the store passes ``wait_for_peers`` so that it outlives the others' last beats."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        if self._failed:
            return
        try:
            self.store.add(f"beat/{self.rank}", _DONE)
            if wait_for_peers:
                self._wait_for_peers()
        except Exception:  # the store is gone: nobody is left to say goodbye to
            return

    def _wait_for_peers(self) -> None:
        """Until every rank finished, an abort, or a rank is silent for ``timeout_s``."""
        last, deadline = None, time.monotonic() + self.timeout_s
        while time.monotonic() < deadline and self.store.add("abort", 0) == 0:
            counts = [self.store.add(f"beat/{r}", 0) for r in range(self.world_size)]
            if all(c >= _DONE for c in counts):
                return
            if counts != last:  # someone still beats: keep waiting
                last, deadline = counts, time.monotonic() + self.timeout_s
            time.sleep(self.interval)

    def _host(self, rank: int) -> str:
        try:
            return self.store.get(f"host/{rank}").decode()
        except Exception:  # the store may be gone too: the rank number still identifies it
            return "host unknown"

    def _abort(self, message: str, publish: bool) -> None:
        self._failed = True
        print(f"[hpcdiff rank {self.rank}] error: {message}", file=sys.stderr, flush=True)
        if publish:
            self._publish(message)
        self.exit(EXIT_PEER_FAILED)

    def _publish(self, message: str) -> None:
        """Tell every rank to stop; linger a beat so they can read it (rank 0 may host it)."""
        try:
            self.store.set("abort_msg", message)
            self.store.add("abort", 1)
        except Exception:  # nothing more to tell anyone; exit anyway
            return
        time.sleep(1.5 * self.interval)

    def _beat(self) -> tuple[int, str | None]:
        """Bump our counter; return the peer's counter and any abort message."""
        self.store.add(f"beat/{self.rank}", 1)
        aborted = self.store.add("abort", 0) > 0
        message = self.store.get("abort_msg").decode() if aborted else None
        return self.store.add(f"beat/{self.peer}", 0), message

    def _run(self) -> None:
        last, changed = -1, time.monotonic()
        while not self._stop.wait(self.interval):
            try:
                count, message = self._beat()
            except Exception as err:
                self._abort(
                    f"lost the rendezvous store at {self.where} ({err}); its host "
                    "(rank 0 or the launcher's agent) has died",
                    publish=False,
                )
                return
            if message is not None:
                self._abort(f"aborting: {message}", publish=False)
                return
            now = time.monotonic()
            if count >= _DONE or count != last:
                last, changed = count, now
            elif now - changed > self.timeout_s:
                self._abort(
                    f"rank {self.peer} ({self._host(self.peer)}) sent no heartbeat for "
                    f"{now - changed:.1f} s: it died or hangs",
                    publish=True,
                )
                return

    def silent_ranks(self) -> list[int]:
        """Ranks whose counter stands still over two beats (dead or hung), finished ones aside."""
        others = [r for r in range(self.world_size) if r != self.rank]
        first = [self.store.add(f"beat/{r}", 0) for r in others]
        time.sleep(2 * self.interval)
        second = [self.store.add(f"beat/{r}", 0) for r in others]
        return [r for r, a, b in zip(others, first, second) if a == b and b < _DONE]

    def report_failure(self, exc: BaseException) -> None:
        """After an uncaught exception: name the rank at fault and tell the others to stop."""
        self._failed = True
        self._stop.set()
        try:
            if _is_comm_error(exc):
                silent = self.silent_ranks()
                who = ", ".join(f"rank {r} ({self._host(r)})" for r in silent)
                who = who or "none (every rank still beats: one is stuck outside the collective)"
                message = f"rank {self.rank} lost a collective; not responding: {who}"
            else:
                message = f"rank {self.rank} failed with {type(exc).__name__}: {exc}"
            print(f"[hpcdiff rank {self.rank}] error: {message}", file=sys.stderr, flush=True)
            self._publish(message)
        except Exception as err:  # the store host is gone: rank 0 or the launcher died
            print(
                f"[hpcdiff rank {self.rank}] error: lost the rendezvous store at "
                f"{self.where} ({err}): rank 0 has died",
                file=sys.stderr,
                flush=True,
            )
