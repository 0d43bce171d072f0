"""The one seam for profiler ranges: ``with hpcdiff.nvtx.range("train.forward"): ...``.

Off by default, and then a range costs one global lookup on entry and exit (nothing is
imported). Enable before the work starts: ranges opened while off are not popped later.
``enable()`` switches every range to a backend; :func:`configure` does it as the environment
(``HPCDIFF_NVTX=1``, read when the ``hpcdiff`` command starts) or the config key
``profiling.nvtx: true`` asks:

* ``"nvtx"``: the ``nvtx`` package, domain ``hpcdiff`` (a no-op unless a tool such as Nsight
  Systems or the recorder in ``profiling/`` is attached);
* ``"torch"``: ``torch.cuda.nvtx`` (CUDA builds only);
* ``"record"``: an in-process list of ``(event, name, thread_id)`` for unit tests.

Range names are fixed: :data:`RANGE_NAMES` lists them with their nesting. :func:`configure`
applies the config section ``profiling``: with ``profiling.model_ranges`` it puts ranges around
the blocks a backbone lists in its ``profiling_blocks()``. Other libraries' ranges reach the
active backend through :func:`push` / :func:`pop` in a domain of their own (DeepSpeed's:
:func:`hpcdiff.distributed.forward_deepspeed_ranges`).
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

DOMAIN = "hpcdiff"
DEEPSPEED_DOMAIN = "DeepSpeed"  # the name DeepSpeed itself uses on GPUs (deepspeed.utils.nvtx)

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
    "model.enc.<i>": "in model.forward or train.forward (profiling.model_ranges): SongUNet "
    "encoder entry i (i-th module of `enc`)",
    "model.dec.<i>": "as model.enc.<i>, for the SongUNet decoder (`dec`)",
    "model.block.<i>": "in model.forward or train.forward (profiling.model_ranges): DiT block i",
}

_backend: _Backend | None = None
_model_hook: Any = None  # handle of the module registration hook of instrument_new_models()


class _Backend:
    """Push/pop in domain ``hpcdiff``; :meth:`domain` gives the same backend in another one."""

    def __init__(self) -> None:
        self._domains: dict[str, _Backend] = {}

    def push(self, name: str) -> None:
        raise NotImplementedError

    def pop(self) -> None:
        raise NotImplementedError

    def domain(self, name: str) -> _Backend:
        if name not in self._domains:
            self._domains[name] = self._in_domain(name)
        return self._domains[name]

    def _in_domain(self, name: str) -> _Backend:
        raise NotImplementedError


class _NvtxBackend(_Backend):
    def __init__(self, domain: str = DOMAIN) -> None:
        import nvtx

        super().__init__()
        self._domain = nvtx.get_domain(domain)
        self._attrs: dict[str, Any] = {}

    def push(self, name: str) -> None:
        attr = self._attrs.get(name)
        if attr is None:
            attr = self._attrs[name] = self._domain.get_event_attributes(message=name)
        self._domain.push_range(attr)

    def pop(self) -> None:
        self._domain.pop_range()

    def _in_domain(self, name: str) -> _Backend:
        return _NvtxBackend(name)


class _TorchBackend(_Backend):
    def __init__(self) -> None:
        import torch

        super().__init__()
        if not torch.cuda.is_available():
            raise RuntimeError("nvtx backend 'torch' needs a CUDA build of PyTorch and a GPU")
        self._nvtx = torch.cuda.nvtx

    def push(self, name: str) -> None:
        self._nvtx.range_push(name)

    def pop(self) -> None:
        self._nvtx.range_pop()

    def _in_domain(self, name: str) -> _Backend:
        return self  # torch.cuda.nvtx has one (default) domain


class RecordingBackend(_Backend):
    """Keeps every push/pop in memory: ``events`` is a list of (``"push"|"pop"``, name, tid);
    ranges of another domain are named ``"<domain>:<name>"``, as ``nsys stats`` shows them."""

    def __init__(self, prefix: str = "", parent: RecordingBackend | None = None) -> None:
        super().__init__()
        self.events: list[tuple[str, str, int]] = parent.events if parent else []
        self._lock: threading.Lock = parent._lock if parent else threading.Lock()
        self._stacks: dict[int, list[str]] = {}  # NVTX keeps one stack per thread and domain
        self._prefix = prefix

    def push(self, name: str) -> None:
        tid = threading.get_ident()
        with self._lock:
            self._stacks.setdefault(tid, []).append(self._prefix + name)
            self.events.append(("push", self._prefix + name, tid))

    def pop(self) -> None:
        tid = threading.get_ident()
        with self._lock:
            stack = self._stacks.get(tid)
            if not stack:
                raise RuntimeError(f"nvtx: pop without a matching push on thread {tid}")
            self.events.append(("pop", stack.pop(), tid))

    def _in_domain(self, name: str) -> _Backend:
        return RecordingBackend(f"{name}:", parent=self)


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
    """Ranges off; also stops instrumenting new backbones (see :func:`instrument_new_models`)."""
    global _backend, _model_hook
    _backend = None
    if _model_hook is not None:
        _model_hook.remove()
        _model_hook = None


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


def known(name: str) -> bool:
    """Whether ``name`` is in :data:`RANGE_NAMES` (``<i>`` standing for a block index)."""
    head, _, index = name.rpartition(".")
    return name in RANGE_NAMES or (index.isdigit() and f"{head}.<i>" in RANGE_NAMES)


def push(name: str, domain: str = DOMAIN) -> None:
    """Open range ``name`` in ``domain`` on the backend active now; nothing while ranges are
    off. For bridges from other libraries' own range calls; hpcdiff's code uses :class:`range`."""
    backend = _backend
    if backend is not None:
        (backend if domain == DOMAIN else backend.domain(domain)).push(name)


def pop(domain: str = DOMAIN) -> None:
    """Close the innermost range of ``domain`` opened by :func:`push` on this thread."""
    backend = _backend
    if backend is not None:
        (backend if domain == DOMAIN else backend.domain(domain)).pop()


def add_domain(name: str) -> bool:
    """Make domain ``name`` on the active backend now, before other threads push to it;
    returns whether ranges are on."""
    if _backend is None:
        return False
    _backend.domain(name)
    return True


def _block_groups(module: Any) -> list[tuple[str, list]]:
    """(range prefix, blocks) that ``module`` lists in its ``profiling_blocks()``; empty for
    modules without that method."""
    blocks = getattr(module, "profiling_blocks", None)
    return list(blocks()) if callable(blocks) else []


def instrument_model(module: Any) -> int:
    """Ranges ``<prefix>.<i>`` around the blocks of every backbone in ``module`` that lists
    them in ``profiling_blocks()`` (SongUNet: ``model.enc.<i>`` / ``model.dec.<i>``; DiT:
    ``model.block.<i>``), as forward pre/post hooks (popped even when a block raises);
    backbones already done are skipped. Returns hooks added."""
    added = 0
    for sub in module.modules():
        groups = _block_groups(sub)
        if not groups or getattr(sub, "_nvtx_block_ranges", False):
            continue
        for prefix, blocks in groups:
            for i, block in enumerate(blocks):
                r = range(f"{prefix}.{i}")
                block.register_forward_pre_hook(lambda m, args, r=r: r.__enter__())
                block.register_forward_hook(lambda m, a, out, r=r: r.__exit__(), always_call=True)
                added += 1
        sub._nvtx_block_ranges = True  # copies (deepcopy) keep hooks and flag together
    return added


def instrument_new_models() -> None:
    """:func:`instrument_model` on every backbone as it is attached to a parent module from
    now on (a module registration hook: nothing runs per forward; until :func:`disable`)."""
    global _model_hook
    if _model_hook is None:
        from torch.nn.modules.module import register_module_module_registration_hook

        def attached(parent: Any, name: str, sub: Any) -> None:
            if sub is not None and _block_groups(sub):
                instrument_model(sub)

        _model_hook = register_module_module_registration_hook(attached)


def configure(
    profiling: Any = None, device: Any = None, environ: Mapping[str, str] = os.environ
) -> None:
    """Switch ranges on as asked, once, before the work starts: ``HPCDIFF_NVTX`` in
    ``environ`` (``1``/``true``/``nvtx``: the nvtx backend; ``torch``: torch.cuda.nvtx) chooses
    a backend (the ``hpcdiff`` command calls this first with the environment only); otherwise
    the config section ``profiling`` with ``nvtx: true`` does (``torch`` on CUDA ``device``,
    else ``nvtx``). Whenever ranges are on, ``profiling.model_ranges`` adds block ranges to
    backbones built from now on."""
    choice = environ.get("HPCDIFF_NVTX", "").lower()
    if _backend is None:
        if choice in ("1", "true", "nvtx"):
            enable("nvtx")
        elif choice == "torch":
            enable("torch")
        elif profiling is not None and profiling.nvtx:
            enable("torch" if device is not None and device.type == "cuda" else "nvtx")
    if _backend is not None and profiling is not None and profiling.model_ranges:
        instrument_new_models()
