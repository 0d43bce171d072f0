"""Background prefetch of batches: one reader thread, or worker processes with own handles.

Both backends take an iterator of :class:`~hpcdiff.data.loader.BatchTask` and return
``(task, arrays, masked)`` in task order, at most ``depth`` batches ahead (bounded memory).
An error in the background is re-raised by :meth:`get` in the consumer: a
:class:`~hpcdiff.data.errors.DataError` as is (it names file, variable and index), anything
else as a ``RuntimeError`` naming the batch's time indices. :meth:`close` never hangs: it
stops the producers, joins them with a timeout and terminates stragglers.

* :class:`ThreadPrefetcher`: chunk-aligned netCDF4 reads release the GIL inside HDF5, so one
  thread overlaps reading with the training step (tile mode: one large read per variable).
* :class:`ProcessPrefetcher`: ``workers`` spawned processes, each opening its own files (an
  HDF5 handle is never shared across fork), writing into shared-memory slots; decoding then
  scales with processes, which it does not with threads (HDF5 holds one global lock).
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import signal
import threading
import weakref
from collections import deque
from collections.abc import Iterator
from multiprocessing.shared_memory import SharedMemory

import numpy as np

from hpcdiff.data.errors import DataError, DataTypeError
from hpcdiff.data.loader import BatchTask, SampleReader
from hpcdiff.data.reader import HANDLES

_POLL = 0.2  # seconds between liveness checks while waiting
_JOIN_TIMEOUT = 10.0
_END = object()


def _wrap(err: BaseException, task: BatchTask | None) -> BaseException:
    if isinstance(err, DataError):
        return err
    times = list(task.times) if task is not None else "?"
    return RuntimeError(f"background read of time indices {times} failed: {err!r}")


class ThreadPrefetcher:
    """Runs ``reader`` over ``tasks`` in one daemon thread, ``depth`` batches ahead."""

    def __init__(self, reader: SampleReader, tasks: Iterator[BatchTask], depth: int = 2) -> None:
        self._reader, self._tasks = reader, tasks
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hpcdiff-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        task = None
        try:
            for task in self._tasks:
                if self._stop.is_set():
                    return
                out = self._reader.allocate(len(task.times), task.shape)
                masked = self._reader.read_into(task, out)
                if not self._put((task, out, masked)):
                    return
        except BaseException as err:  # handed to the consumer, which re-raises it
            self._put(_wrap(err, task))
            return
        self._put(_END)

    def get(self) -> tuple[BatchTask, dict[str, np.ndarray], int]:
        """The next batch in order; raises StopIteration at the end, or the background error."""
        while True:
            try:
                item = self._queue.get(timeout=_POLL)
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise RuntimeError("prefetch thread stopped without a result") from None
                continue
            if item is _END:
                self._queue.put(_END)  # stay exhausted
                raise StopIteration
            if isinstance(item, BaseException):
                self.close()
                raise item
            return item

    def close(self) -> None:
        """Stop the thread and drop prefetched batches."""
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=_JOIN_TIMEOUT)


def _slot_views(buf, layout: dict, n_slots: int) -> list[dict[str, np.ndarray]]:
    """Numpy views of each slot's arrays inside one shared-memory buffer."""
    views, offset = [], 0
    for _ in range(n_slots):
        slot = {}
        for name, (shape, dtype) in layout.items():
            arr = np.ndarray(shape, dtype=dtype, buffer=buf, offset=offset)
            slot[name] = arr
            offset += -(-arr.nbytes // 64) * 64
        views.append(slot)
    return views


def _slot_bytes(layout: dict) -> int:
    return sum(-(-int(np.prod(s)) * np.dtype(d).itemsize // 64) * 64 for s, d in layout.values())


def _error_record(err: BaseException, task: BatchTask) -> dict:
    if isinstance(err, DataError):
        return {
            "kind": type(err).__name__,
            "reason": err.reason,
            "path": err.path,
            "variable": err.variable,
            "index": None if err.index is None else str(err.index),
        }
    return {"kind": "other", "message": repr(err), "times": list(task.times)}


def _rebuild(record: dict) -> BaseException:
    kind = record["kind"]
    if kind in ("DataError", "DataTypeError"):
        cls = DataTypeError if kind == "DataTypeError" else DataError
        fields = {k: record[k] for k in ("path", "variable", "index")}
        return cls(record["reason"], **fields)
    times, message = record["times"], record["message"]
    return RuntimeError(f"data worker failed on time indices {times}: {message}")


def _worker_main(reader, shm_name, layout, n_slots, tasks, results) -> None:
    """Worker process: read tasks into shared-memory slots until a None task arrives."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is handled by the consumer
    shm = SharedMemory(name=shm_name)
    views = _slot_views(shm.buf, layout, n_slots)
    try:
        while (item := tasks.get()) is not None:
            seq, slot, task = item
            try:
                masked = reader.read_into(task, views[slot])
                results.put((seq, slot, "ok", masked))
            except Exception as err:
                results.put((seq, slot, "error", _error_record(err, task)))
    finally:
        del views
        shm.close()
        HANDLES.close_all()


class _Resources:
    """Processes, queues and shared memory of a ProcessPrefetcher; shut down exactly once."""

    def __init__(self, procs, tasks, results, shm, views) -> None:
        self.procs, self.tasks, self.results = procs, tasks, results
        self.shm, self.views = shm, views
        self.closed = False

    def shutdown(self) -> None:
        if self.closed:
            return
        self.closed = True
        for _ in self.procs:
            self.tasks.put(None)
        for p in self.procs:
            p.join(timeout=_JOIN_TIMEOUT)
            if p.is_alive():
                p.terminate()
                p.join(timeout=_JOIN_TIMEOUT)
        for q in (self.tasks, self.results):
            q.cancel_join_thread()
            q.close()
        self.views.clear()
        self.shm.close()
        self.shm.unlink()


class ProcessPrefetcher:
    """Runs ``reader`` over ``tasks`` in ``workers`` spawned processes, ``depth`` batches ahead.

    All batches have ``batch_size`` samples or fewer and windows of one ``shape``.
    """

    def __init__(
        self,
        reader: SampleReader,
        tasks: Iterator[BatchTask],
        batch_size: int,
        shape: tuple[int, int],
        depth: int = 2,
        workers: int = 2,
        start_method: str = "spawn",
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        ctx = mp.get_context(start_method)
        layout = reader.layout(batch_size, shape)
        n_slots = max(1, depth) + workers
        shm = SharedMemory(create=True, size=n_slots * _slot_bytes(layout))
        views = _slot_views(shm.buf, layout, n_slots)
        task_q, result_q = ctx.Queue(), ctx.Queue()
        args = (reader, shm.name, layout, n_slots, task_q, result_q)
        procs = [
            ctx.Process(target=_worker_main, args=args, name=f"hpcdiff-data-{i}", daemon=True)  # type: ignore[attr-defined]
            for i in range(workers)
        ]
        self._res = _Resources(procs, task_q, result_q, shm, views)
        self._finalizer = weakref.finalize(self, self._res.shutdown)
        for p in procs:
            p.start()
        self._tasks, self._free = tasks, deque(range(n_slots))
        self._pending: dict[int, tuple[BatchTask, int]] = {}
        self._done: dict[int, int] = {}
        self._next_seq: int | None = None
        self._exhausted = False
        self._fill()

    def _fill(self) -> None:
        while self._free and not self._exhausted:
            task = next(self._tasks, None)
            if task is None:
                self._exhausted = True
                return
            if self._next_seq is None:
                self._next_seq = task.seq
            slot = self._free.popleft()
            self._pending[task.seq] = (task, slot)
            self._res.tasks.put((task.seq, slot, task))

    def _receive(self) -> None:
        try:
            seq, slot, status, payload = self._res.results.get(timeout=_POLL)
        except queue.Empty:
            for p in self._res.procs:
                if p.exitcode is not None:
                    self.close()
                    raise RuntimeError(
                        f"data worker {p.name} (pid {p.pid}) exited with code {p.exitcode}"
                    ) from None
            return
        if status != "ok":
            self.close()
            raise _rebuild(payload)
        self._done[seq] = payload

    def get(self) -> tuple[BatchTask, dict[str, np.ndarray], int]:
        """The next batch in order; raises StopIteration at the end, or the worker's error."""
        if self._res.closed:
            raise RuntimeError("ProcessPrefetcher is closed")
        if self._next_seq not in self._pending:
            raise StopIteration
        while self._next_seq not in self._done:
            self._receive()
        task, slot = self._pending.pop(self._next_seq)
        masked = self._done.pop(self._next_seq)
        n = len(task.times)
        arrays = {k: v[:n].copy() for k, v in self._res.views[slot].items()}
        self._free.append(slot)
        self._next_seq += 1
        self._fill()
        return task, arrays, masked

    def close(self) -> None:
        """Stop and join the workers, release the shared memory."""
        self._finalizer()
