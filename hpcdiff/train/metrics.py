"""Training metrics: one JSON line per logged step in ``metrics.jsonl``, the progress bar
(or a console line when no bar is drawn) and, with ``run.tensorboard``, TensorBoard scalars in
``tensorboard/``.

Only rank 0 writes. Memory is reported as peak resident set size of this process and, on CUDA,
peak allocated device memory.
"""

from __future__ import annotations

import importlib.util
import json
import os
import resource
import time
from numbers import Real
from pathlib import Path
from typing import Any, TextIO

import torch
from tqdm import tqdm

from hpcdiff.config import ConfigError
from hpcdiff.progress import TrainProgress

CONSOLE_KEYS = ("step", "loss", "val_loss", "lr", "patches_per_s", "peak_rss_mib")


def peak_rss_mib() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def peak_device_mib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


class Throughput:
    """Samples and patches per second over the steps of an interval: :meth:`restart` begins
    one (after each report); :meth:`skip` drops the time spent so far from it (checkpoints,
    validation)."""

    def __init__(self, samples_per_step: int, patches_per_step: int) -> None:
        self.samples_per_step, self.patches_per_step = samples_per_step, patches_per_step
        self.since, self.steps = time.perf_counter(), 0

    def step(self) -> None:
        self.steps += 1

    def skip(self) -> None:
        self.since = time.perf_counter()

    def restart(self) -> None:
        self.since, self.steps = time.perf_counter(), 0

    def rates(self) -> dict[str, float]:
        """``samples_per_s`` and ``patches_per_s`` of the interval so far."""
        elapsed = time.perf_counter() - self.since
        return {"samples_per_s": self.steps * self.samples_per_step / elapsed,
                "patches_per_s": self.steps * self.patches_per_step / elapsed}  # fmt: skip


def require_tensorboard(enabled: bool) -> None:
    """Raise :class:`ConfigError` naming ``run.tensorboard`` when it is on but the
    ``tensorboard`` package is missing (call it on every rank, so all of them stop)."""
    if enabled and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError(
            "config key 'run.tensorboard' is true but the 'tensorboard' package is not "
            "installed; install it (pinned in requirements/test.txt) or set run.tensorboard=false"
        )


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """TensorBoard tags and values of a metrics record: numbers under their key, mappings of
    numbers as ``key/name`` (e.g. ``loss_per_channel/u10``); ``step``, ``time_s``, None skipped.

    >>> scalars({"step": 3, "loss": 0.5, "loss_per_channel": {"u": 0.25}, "peak": None})
    {'loss': 0.5, 'loss_per_channel/u': 0.25}
    """
    out: dict[str, float] = {}
    for key, value in record.items():
        if key in ("step", "time_s"):
            continue
        items = value.items() if isinstance(value, dict) else [(None, value)]
        for name, v in items:
            if isinstance(v, Real) and not isinstance(v, bool):
                out[key if name is None else f"{key}/{name}"] = float(v)
    return out


def _open_tensorboard(run_dir: Path, start_step: int) -> Any:
    """A SummaryWriter on ``<run_dir>/tensorboard``; a resumed run hides the events its
    earlier attempt logged after the checkpoint it resumes from (as ``metrics.jsonl``)."""
    require_tensorboard(True)
    from torch.utils.tensorboard import SummaryWriter

    purge = start_step + 1 if start_step > 0 else None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=purge, flush_secs=30)


class MetricsLogger:
    """Appends metric records to ``<run_dir>/metrics.jsonl`` and shows progress on rank 0.

    ``progress`` is ``run.progress`` (see :mod:`hpcdiff.progress`); with no bar drawn
    each record is printed as a line with the estimated time left. ``tensorboard`` mirrors
    the records as scalars in ``<run_dir>/tensorboard``.
    """

    def __init__(
        self, run_dir: Path, rank: int, total_steps: int, start_step: int = 0,
        progress: str = "auto", tensorboard: bool = False, stream: TextIO | None = None,
    ) -> None:  # fmt: skip
        require_tensorboard(tensorboard)
        self.active = rank == 0
        self.total_steps, self.start_step = total_steps, start_step
        self.progress = TrainProgress(total_steps, start_step, rank, progress, stream)
        self._t0 = time.perf_counter()
        self._file = None
        self._tb = None
        if self.active:
            path = Path(run_dir) / "metrics.jsonl"
            if path.exists():  # a resumed run: forget what was logged after its checkpoint
                rows = path.read_text().splitlines()
                kept = [r for r in rows if r.strip() and json.loads(r).get("step", 0) <= start_step]
                tmp = path.with_name(".metrics.jsonl.tmp")
                tmp.write_text("".join(f"{r}\n" for r in kept))
                os.replace(tmp, path)
            self._file = open(path, "a", buffering=1)
            if tensorboard:
                self._tb = _open_tensorboard(Path(run_dir), start_step)

    def advance(self, step: int) -> None:
        """``step`` optimizer steps are done: move the progress bar (cheap; every step)."""
        self.progress.update(step)

    def eta_s(self, step: int) -> float | None:
        """Seconds left at ``step``: the average time per step since this (re)start."""
        done = step - self.start_step
        if done <= 0:
            return None
        return (time.perf_counter() - self._t0) / done * (self.total_steps - step)

    def log(self, record: dict[str, Any]) -> None:
        """Write one record (must contain ``step``) and update the console."""
        if not self.active:
            return
        record = {"time_s": round(time.perf_counter() - self._t0, 3), **record}
        self._file.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for tag, value in scalars(record).items():
                self._tb.add_scalar(tag, value, global_step=record["step"])
        if self.progress.active:
            self.progress.set_metrics(record)
            return
        summary = " ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in record.items()
            if k in CONSOLE_KEYS
        )
        eta = self.eta_s(record["step"])
        print(summary if eta is None else f"{summary} eta={tqdm.format_interval(eta)}", flush=True)

    def close(self) -> None:
        self.progress.close()
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
