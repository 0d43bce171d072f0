"""Training metrics: one JSON line per logged step in ``metrics.jsonl`` plus a console line.

Only rank 0 writes. Memory is reported as peak resident set size of this process and, on CUDA,
peak allocated device memory.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch


def peak_rss_mib() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def peak_device_mib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


class MetricsLogger:
    """Appends metric records to ``<run_dir>/metrics.jsonl`` and shows progress on rank 0."""

    def __init__(self, run_dir: Path, rank: int, total_steps: int, start_step: int = 0) -> None:
        self.active = rank == 0
        self.total_steps = total_steps
        self._t0 = time.perf_counter()
        self._bar = None
        self._file = None
        if self.active:
            path = Path(run_dir) / "metrics.jsonl"
            if path.exists():  # a resumed run: forget what was logged after its checkpoint
                rows = path.read_text().splitlines()
                kept = [r for r in rows if r.strip() and json.loads(r).get("step", 0) <= start_step]
                tmp = path.with_name(".metrics.jsonl.tmp")
                tmp.write_text("".join(f"{r}\n" for r in kept))
                os.replace(tmp, path)
            self._file = open(path, "a", buffering=1)
            if sys.stderr.isatty():
                from tqdm import tqdm

                self._bar = tqdm(
                    total=total_steps, initial=start_step, unit="step", dynamic_ncols=True
                )

    def log(self, record: dict[str, Any]) -> None:
        """Write one record (must contain ``step``) and update the console."""
        if not self.active:
            return
        record = {"time_s": round(time.perf_counter() - self._t0, 3), **record}
        self._file.write(json.dumps(record) + "\n")
        summary = " ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in record.items()
            if k in ("step", "loss", "val_loss", "lr", "patches_per_s", "peak_rss_mib")
        )
        if self._bar is not None:
            self._bar.n = record["step"]
            self._bar.set_postfix_str(summary, refresh=True)
        else:
            print(summary, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._file is not None:
            self._file.close()
