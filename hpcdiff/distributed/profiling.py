"""DeepSpeed's own profiler ranges, routed to hpcdiff's range seam (:mod:`hpcdiff.nvtx`)."""

from __future__ import annotations

from typing import Any

from hpcdiff import nvtx


def forward_deepspeed_ranges() -> bool:
    """While hpcdiff's ranges are on, send DeepSpeed's ranges to the active backend, domain
    ``DeepSpeed``, when its accelerator cannot emit them itself (CPU); returns whether they
    are now forwarded.

    DeepSpeed emits every range (``@instrument_w_nvtx`` on ZeRO and engine functions, and its
    direct calls) through ``get_accelerator().range_push(msg)`` / ``.range_pop()``, and the CPU
    accelerator defines both as no-ops. The accelerator is one object per process, so two
    instance attributes shadowing those methods on it are the whole patch; they route to the
    backend active at call time (nothing once ranges are off). Accelerators that have NVTX
    domains (CUDA) already emit to ``DeepSpeed`` and are left alone.
    """
    if not nvtx.enabled():
        return False
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    if getattr(accelerator, "supports_nvtx_domain", False):
        return False

    def range_push(msg: str, domain: str | None = None, category: Any = None) -> None:
        nvtx.push(msg, nvtx.DEEPSPEED_DOMAIN)

    def range_pop(domain: str | None = None) -> None:
        nvtx.pop(nvtx.DEEPSPEED_DOMAIN)

    nvtx.add_domain(nvtx.DEEPSPEED_DOMAIN)  # made now, before any other thread can push
    accelerator.range_push, accelerator.range_pop = range_push, range_pop
    return True
