"""The one seam for profiler ranges: ``with hpcdiff.nvtx.range("train.forward"): ...``.

Off by default, and then a range costs one global lookup on entry and exit (nothing is
imported). Enable before the work starts: ranges opened while off are not popped later.
``enable()`` (or ``HPCDIFF_NVTX=1`` in the environment, or the config key
``profiling.nvtx: true``) switches every range to a backend:

* ``"nvtx"``: the ``nvtx`` package, domain ``hpcdiff`` (a no-op unless a tool such as Nsight
  Systems or the recorder in ``profiling/`` is attached);
* ``"torch"``: ``torch.cuda.nvtx`` (CUDA builds only);
* ``"record"``: an in-process list of ``(event, name, thread_id)`` for unit tests.

Range names are fixed: :data:`RANGE_NAMES` lists them with their nesting.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from typing import Any

DOMAIN = "hpcdiff"

RANGE_NAMES: dict[str, str] = {
    "train.step": "one optimizer step (root of the training ranges)",
    "train.data": "in train.step: fetch the next batch of tiles/patches",
    "train.forward": "in train.step: preconditioned backbone forward",
    "train.loss": "in train.step: DSM loss reduction",
    "train.backward": "in train.step: backward pass (incl. ZeRO gradient reduction)",
    "train.optim": "in train.step: optimizer step",
    "train.ema": "in train.step: EMA update",
    "train.ckpt": "checkpoint write",
    "train.validate": "validation loss",
    "sample": "one sampling run (root of the sampling ranges)",
    "sample.step": "in sample: one solver step",
    "sample.denoise": "in sample.step: one denoiser evaluation",
    "patch.extract": "in sample.denoise: cut patches from the state",
    "model.forward": "in sample.denoise: backbone forward on patches",
    "patch.fuse": "in sample.denoise: fuse patch predictions",
    "sample.guidance": "in sample.denoise: guidance term",
    "comm.halo": "halo exchange between neighbouring ranks",
    "data.read": "NetCDF read of a tile or window",
    "data.normalize": "normalization of a read block",
}

_backend: _Backend | None = None


class _Backend:
    def push(self, name: str) -> None:
        raise NotImplementedError

    def pop(self) -> None:
        raise NotImplementedError


class _NvtxBackend(_Backend):
    def __init__(self) -> None:
        import nvtx

        self._domain = nvtx.get_domain(DOMAIN)
        self._attrs: dict[str, Any] = {}

    def push(self, name: str) -> None:
        attr = self._attrs.get(name)
        if attr is None:
            attr = self._attrs[name] = self._domain.get_event_attributes(message=name)
        self._domain.push_range(attr)

    def pop(self) -> None:
        self._domain.pop_range()


class _TorchBackend(_Backend):
    def __init__(self) -> None:
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("nvtx backend 'torch' needs a CUDA build of PyTorch and a GPU")
        self._nvtx = torch.cuda.nvtx

    def push(self, name: str) -> None:
        self._nvtx.range_push(name)

    def pop(self) -> None:
        self._nvtx.range_pop()


class RecordingBackend(_Backend):
    """Keeps every push/pop in memory: ``events`` is a list of (``"push"|"pop"``, name, tid)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, int]] = []
        self._stacks: dict[int, list[str]] = {}
        self._lock = threading.Lock()

    def push(self, name: str) -> None:
        tid = threading.get_ident()
        with self._lock:
            self._stacks.setdefault(tid, []).append(name)
            self.events.append(("push", name, tid))

    def pop(self) -> None:
        tid = threading.get_ident()
        with self._lock:
            stack = self._stacks.get(tid)
            if not stack:
                raise RuntimeError(f"nvtx: pop without a matching push on thread {tid}")
            self.events.append(("pop", stack.pop(), tid))


_BACKENDS: dict[str, Callable[[], _Backend]] = {
    "nvtx": _NvtxBackend,
    "torch": _TorchBackend,
    "record": RecordingBackend,
}


def enable(backend: str = "nvtx") -> _Backend:
    """Route all ranges to ``backend`` ("nvtx", "torch" or "record"); returns the backend."""
    global _backend
    if backend not in _BACKENDS:
        raise ValueError(f"unknown nvtx backend {backend!r}; choose one of {sorted(_BACKENDS)}")
    _backend = _BACKENDS[backend]()
    return _backend


def disable() -> None:
    global _backend
    _backend = None


def enabled() -> bool:
    return _backend is not None


class range:  # lower case: reads as `with nvtx.range("name")`, like the nvtx package
    """A named range, usable as a context manager or as a decorator."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> None:
        if _backend is not None:
            _backend.push(self.name)

    def __exit__(self, *exc: object) -> None:
        if _backend is not None:
            _backend.pop()

    def __call__(self, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            with self:
                return fn(*args, **kwargs)

        return wrapped


def mark(name: str) -> None:
    """An instantaneous event (only the nvtx backend shows it)."""
    if isinstance(_backend, _NvtxBackend):
        _backend._domain.mark(_backend._domain.get_event_attributes(message=name))


if os.environ.get("HPCDIFF_NVTX", "").lower() in ("1", "true", "nvtx"):
    enable("nvtx")
elif os.environ.get("HPCDIFF_NVTX", "").lower() == "torch":
    enable("torch")
