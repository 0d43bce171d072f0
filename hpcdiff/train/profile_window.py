"""The profiling capture window of a training run (config keys ``profiling.capture_steps`` and
``profiling.torch_trace``).

Steps ``[start, stop)`` (0-based optimizer steps) are bracketed by ``cudaProfilerStart/Stop``
when CUDA is present, so ``nsys profile --capture-range=cudaProfilerApi`` records just them,
and, with ``torch_trace``, by a ``torch.profiler`` session that writes one Chrome trace per
rank to ``<run>/traces/rank_<r>.json`` (CPU activity, plus CUDA kernels on GPUs).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch


class CaptureWindow:
    """Call :meth:`before_step` and :meth:`after_step` around every optimizer step."""

    def __init__(
        self,
        capture_steps: tuple[int, int] | None,
        torch_trace: bool,
        run_dir: Path,
        rank: int,
        device: torch.device,
    ) -> None:
        self.start: int | None = None  # first step of the capture window
        self.stop: int | None = None  # first step after it
        if capture_steps is not None:
            self.start, self.stop = capture_steps
        self.torch_trace, self.device = torch_trace, device
        self.trace_path = Path(run_dir) / "traces" / f"rank_{rank:05d}.json"
        self._profiler: torch.profiler.profile | None = None

    def before_step(self, step: int) -> None:
        if step != self.start:
            return
        if self.device.type == "cuda":
            torch.cuda.profiler.start()
        if self.torch_trace:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if self.device.type == "cuda":
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self._profiler = torch.profiler.profile(activities=activities, record_shapes=False)
            self._profiler.__enter__()

    def after_step(self, step: int) -> None:
        if self.stop is None or step + 1 != self.stop:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.profiler.stop()
        if self._profiler is not None:
            self._profiler.__exit__(None, None, None)
            self.trace_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.trace_path.with_name(f".{self.trace_path.name}.tmp")
            self._profiler.export_chrome_trace(str(tmp))
            os.replace(tmp, self.trace_path)
            self._profiler = None
