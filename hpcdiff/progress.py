"""Progress bars on rank 0 (tqdm on stderr): optimizer steps of training, solver steps of
sampling.

``run.progress`` chooses when they are drawn: ``auto`` when stderr is a terminal, ``always``
(e.g. into a batch job's log file, redrawn at most every 10 s there), ``never``. Ranks > 0
never draw. The estimated time left is the average rate since this (re)start, so a resumed
run's bar starts at its resume step and its ETA ignores the steps done before.
"""

from __future__ import annotations

import sys
from typing import Any, Literal, TextIO, get_args

from tqdm import tqdm

ProgressMode = Literal["auto", "always", "never"]


def _isatty(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty is not None and isatty())


def show_progress(mode: str, rank: int, stream: TextIO | None = None) -> bool:
    """Whether ``rank`` draws bars on ``stream`` (default stderr) under ``run.progress=mode``."""
    if mode not in get_args(ProgressMode):
        raise ValueError(f"progress mode must be one of {list(get_args(ProgressMode))}, "
                         f"got {mode!r}")  # fmt: skip
    if rank != 0 or mode == "never":
        return False
    return mode == "always" or _isatty(sys.stderr if stream is None else stream)


def _bar(total: int, initial: int, unit: str, desc: str, stream: TextIO) -> tqdm:
    tty = _isatty(stream)
    return tqdm(
        total=total, initial=initial, unit=unit, desc=desc, file=stream, dynamic_ncols=tty,
        smoothing=0.0, mininterval=0.1 if tty else 10.0,
    )  # fmt: skip


class TrainProgress:
    """Training bar on rank 0: steps done / total from the resume step, latest loss,
    patches/s and learning rate, elapsed time and ETA = (total - n) / average rate.

    >>> import io
    >>> bar = TrainProgress(10, start_step=4, mode="always", stream=io.StringIO())
    >>> bar.update(6)
    >>> bar.bar.n, bar.bar.initial
    (6, 4)
    >>> bar.close()
    """

    POSTFIX = {"loss": "loss", "val_loss": "val_loss", "patches_per_s": "patches/s", "lr": "lr"}

    def __init__(
        self, total_steps: int, start_step: int = 0, rank: int = 0, mode: str = "auto",
        stream: TextIO | None = None,
    ) -> None:  # fmt: skip
        stream = sys.stderr if stream is None else stream
        self.bar = None
        if show_progress(mode, rank, stream):
            self.bar = _bar(total_steps, start_step, "step", "train", stream)
        self._postfix: dict[str, str] = {}

    @property
    def active(self) -> bool:
        return self.bar is not None

    def update(self, step: int) -> None:
        """Move the bar to ``step`` optimizer steps done (drawn at most every mininterval)."""
        if self.bar is not None and step > self.bar.n:
            self.bar.update(step - self.bar.n)

    def set_metrics(self, record: dict[str, Any]) -> None:
        """Show the latest values of a metrics record (``step``, ``loss``, ``patches_per_s``,
        ``lr``, ``val_loss``) after the bar."""
        if self.bar is None:
            return
        for key, label in self.POSTFIX.items():
            if record.get(key) is not None:
                self._postfix[label] = f"{record[key]:.4g}"
        self.bar.set_postfix_str(", ".join(f"{k}={v}" for k, v in self._postfix.items()),
                                 refresh=False)  # fmt: skip
        self.update(record.get("step", self.bar.n))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class SamplingProgress:
    """Solver-step bar on rank 0 over ``items`` sampling runs (e.g. validation times) of
    ``num_steps`` solver steps each; call :meth:`on_step` after every solver step.

    >>> import io
    >>> out = io.StringIO()
    >>> with SamplingProgress(3, items=2, rank=0, mode="always", stream=out) as progress:
    ...     for _ in range(4):
    ...         progress.on_step()
    >>> "4/6" in out.getvalue() and "time 2/2 step 1/3" in out.getvalue()
    True
    """

    def __init__(
        self, num_steps: int, items: int = 1, rank: int = 0, mode: str = "auto",
        desc: str = "sample", stream: TextIO | None = None,
    ) -> None:  # fmt: skip
        for name, value in (("num_steps", num_steps), ("items", items)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        stream = sys.stderr if stream is None else stream
        self.num_steps, self.items = num_steps, items
        self.bar = None
        if show_progress(mode, rank, stream):
            self.bar = _bar(num_steps * items, 0, "step", desc, stream)

    @property
    def active(self) -> bool:
        return self.bar is not None

    def on_step(self) -> None:
        """One solver step done: advance the bar and show ``time k/items step i/num_steps``."""
        if self.bar is None:
            return
        k, i = divmod(self.bar.n, self.num_steps)  # the step being completed, 0-based
        self.bar.set_postfix_str(f"time {k + 1}/{self.items} step {i + 1}/{self.num_steps}",
                                 refresh=False)  # fmt: skip
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> SamplingProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
