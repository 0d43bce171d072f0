"""What ``hpcdiff train`` checks before its first step, the same with and without ``--dry-run``.

The config rules between keys (``sample.overlap_pix`` against ``data.patch_shape``, ...) are in
:meth:`TrainConfig.validate`, so ``hpcdiff config check`` reports them too. Here are the checks
that need the files: every configured time range holds target times, and the condition files
hold every validation time (the training times are checked by the training stream). A run that
is already finished is reported in one line (:func:`finished_message`).
"""

from __future__ import annotations

from pathlib import Path

from hpcdiff.data.errors import DataError
from hpcdiff.data.stream import condition_time_map
from hpcdiff.experiment.config import TrainConfig


def check_time_ranges(cfg: TrainConfig, sources: dict) -> None:
    """DataError unless ``data.train_time`` and ``data.valid_time`` each select target times
    (validation and ``hpcdiff sample`` read the validation times) that the condition files
    hold."""
    target = sources["target"]
    for split in ("train", "valid"):
        start, end = cfg.data.time_range(split)
        indices = target.time_indices(start, end)
        if indices.size == 0:  # the message DataStream gives when it opens the split
            raise DataError(f"config key 'data.{split}_time': no target time in [{start}, {end}]")
        if split == "valid" and "condition" in sources:
            condition_time_map(target, sources["condition"], indices)


def finished_message(run_dir: Path, step: int, steps: int) -> str:
    """One line for a run whose checkpoint is at or past ``run.steps``: nothing to train."""
    return (
        f"hpcdiff train: {run_dir} is finished: its checkpoint is at step {step} and "
        f"run.steps={steps}, so there is nothing to train; to continue, raise run.steps "
        f"(e.g. run.steps={max(steps, step) * 2}); for a new run, set another run.name"
    )
