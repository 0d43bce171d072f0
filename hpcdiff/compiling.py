"""``torch.compile`` of the denoising network (``model.compile`` in training, ``sample.compile``
in sampling), with the compile cache kept in the run directory.

What is compiled is the preconditioned backbone inside the patch wrapper (``Module.compile``,
in place: parameter names, checkpoints, EMA and ZeRO's partitioning are unchanged; ZeRO-3's
parameter hooks stay eager between the compiled pieces). Patching, fusing, halo exchanges
and the solver stay eager: they are bandwidth-bound and full of host logic.

The cache (Inductor's FX-graph and AOT-autograd caches, Triton kernels on GPUs) goes to
``<run>/compile_cache`` unless ``TORCHINDUCTOR_CACHE_DIR`` is set already: every rank of a
run and every restart of it reuse the kernels compiled before (the cache writes atomically,
so ranks sharing it are safe), and a run directory moved elsewhere takes its cache along.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torch._functorch.config
import torch._inductor.config

CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
log = logging.getLogger(__name__)


def use_run_cache(run_dir: str | os.PathLike) -> Path:
    """Point the compile cache at ``<run_dir>/compile_cache`` (unless the environment names
    another than torch's default) and turn on the persistent caches; returns the directory in
    use. Call it before the first compilation of the process."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    # Torch writes its default into the environment once anything asked for the cache
    # directory (DeepSpeed's set-up may): that value is not a user's choice.
    named = os.environ.get(CACHE_ENV)
    if named and os.path.abspath(named) != os.path.abspath(default_cache_dir()):
        cache = Path(named)
    else:
        cache = Path(run_dir).resolve() / "compile_cache"
    os.environ[CACHE_ENV] = str(cache)
    cache.mkdir(parents=True, exist_ok=True)
    torch._inductor.config.fx_graph_cache = True
    torch._functorch.config.enable_autograd_cache = True
    return cache


def compile_network(
    wrapper: torch.nn.Module, backend: str = "inductor", mode: str | None = None
) -> torch.nn.Module:
    """Compile ``wrapper.model`` (the network a patch wrapper such as ``MultiDiffusionModel2D``
    runs on each batch of patches) in place; returns ``wrapper``.

    Random operations (dropout) draw the same numbers as in eager mode (Inductor's
    ``fallback_random``): Inductor's own generator would consume the global RNG differently,
    so a compiled run would leave the eager run's loss curve after the first step, and a run
    could not switch between compiled and eager across a resume."""
    torch._inductor.config.fallback_random = True
    network = wrapper.model
    network.compile(backend=backend, mode=mode)
    log.info("compiling %s with torch.compile (backend %s, mode %s)", type(network).__name__,
             backend, mode)  # fmt: skip
    return wrapper
