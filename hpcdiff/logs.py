"""Per-rank log files for the ``hpcdiff`` logger hierarchy and Python warnings.

Every module logs through ``logging.getLogger(__name__)``. :func:`setup_logging` sends those
records (and ``warnings.warn`` messages, via ``py.warnings``) to
``<run_dir>/logs/rank{rank:05d}.log`` on every rank; the console shows INFO records of rank 0
only and warnings of every rank, prefixed with the rank. Console lines are written through
``tqdm.write`` so that they never break a progress bar.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from pathlib import Path

from tqdm import tqdm

LOGGERS = ("hpcdiff", "py.warnings")  # the package hierarchy and captured warnings
_MARK = "_hpcdiff_handler"  # set on the handlers installed here, so a new setup replaces them


class _ConsoleHandler(logging.StreamHandler):
    """A stream handler that prints through ``tqdm.write`` (clears and redraws open bars).
    Records logged with ``extra={"console": False}`` go to the log file only."""

    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(record, "console", True) and bool(super().filter(record))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # logging must never raise into the caller
            self.handleError(record)


class _Formatter(logging.Formatter):
    """Records without trailing blank lines (``warnings.formatwarning`` ends with one)."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).rstrip()


class _ConsoleFormatter(_Formatter):
    """INFO lines as they are; warnings and errors prefixed with rank, level and logger."""

    def __init__(self, rank: int) -> None:
        super().__init__("%(message)s")
        self.loud = _Formatter(f"[rank {rank}] %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        if record.levelno >= logging.WARNING:
            return self.loud.format(record)
        return super().format(record)


def _level(level: int | str) -> int:
    value = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    if not isinstance(value, int):
        raise ValueError(f"level must be a logging level name or number, got {level!r}")
    return value


def close_logging() -> None:
    """Undo :func:`setup_logging`: close its handlers, let records propagate to the root
    logger again at its level, stop capturing warnings."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if getattr(h, _MARK, False)]:
            logger.removeHandler(handler)
            handler.close()
        logger.propagate = True
        logger.setLevel(logging.NOTSET)
    logging.captureWarnings(False)


def setup_logging(run_dir: str | Path, rank: int, level: int | str = "INFO") -> Path:
    """Log the ``hpcdiff`` hierarchy and Python warnings of this rank to
    ``<run_dir>/logs/rank{rank:05d}.log`` at ``level`` (timestamp, rank, level, logger name);
    console: INFO on rank 0, warnings on every rank. Idempotent; returns the log file path."""
    file_level = _level(level)
    console_level = logging.INFO if rank == 0 else logging.WARNING
    path = Path(run_dir) / "logs" / f"rank{rank:05d}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    close_logging()

    to_file = logging.FileHandler(path, mode="a", encoding="utf-8")
    to_file.setLevel(file_level)
    to_file.setFormatter(
        _Formatter(f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s")
    )
    to_console = _ConsoleHandler(sys.stderr)
    to_console.setLevel(console_level)
    to_console.setFormatter(_ConsoleFormatter(rank))
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(min(file_level, console_level))
        logger.propagate = False  # the root logger's handlers would print every record again
        for handler in (to_file, to_console):
            setattr(handler, _MARK, True)
            logger.addHandler(handler)
    logging.captureWarnings(True)

    # A header in the file only (not on the console): which process wrote this part.
    header = logging.LogRecord(
        "hpcdiff.logs", logging.INFO, __file__, 0,
        "rank %d logging (pid %d on %s)", (rank, os.getpid(), socket.gethostname()), None,
    )  # fmt: skip
    to_file.handle(header)
    return path
