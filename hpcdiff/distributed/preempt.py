"""Graceful stop on a signal (preemption, time limit, ``scancel``) and Slurm requeue.

The signal handler only records the signal: saving inside a handler can deadlock (it may run
in the middle of a collective or of a ``torch.save``). After every optimizer step the trainer
asks :meth:`StopFlag.agreed`, one all-reduce (MAX) of this rank's flag, so every rank stops
after the same step even when the signal reached only some of them, or reached them between
two steps. The trainer then writes a checkpoint, and :func:`conclude` verifies it and requeues
the Slurm job (``run.requeue``) or prints the command that resumes. This module imports torch
only when a collective is needed, so the handler can be installed before the heavy imports.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_STOP_SIGNALS = ("SIGTERM", "SIGUSR2")
_UNCATCHABLE = ("SIGKILL", "SIGSTOP")
REQUEUE_MODES = ("auto", "never", "always")


class TrainingStopped(Exception):
    """Raised by the trainer after a graceful stop: checkpoint written, resources released."""

    def __init__(self, step: int, signal_name: str, requeued: bool) -> None:
        super().__init__(f"stopped by {signal_name} after step {step}")
        self.step, self.signal_name, self.requeued = step, signal_name, requeued


def signal_of(name: str) -> signal.Signals:
    """``SIGUSR2``, ``USR2`` or ``sigusr2`` -> ``signal.SIGUSR2``; ValueError if unknown or
    uncatchable (SIGKILL, SIGSTOP)."""
    text = name.name if isinstance(name, signal.Signals) else str(name).strip().upper()
    text = text if text.startswith("SIG") else f"SIG{text}"
    if text in _UNCATCHABLE:
        raise ValueError(f"{text} cannot be caught")
    sig = getattr(signal.Signals, text, None)
    if sig is None or text.startswith("SIG_"):
        raise ValueError(f"{name!r} is not a signal name")
    return sig


class StopFlag:
    """This rank's record of a stop signal; the handler only sets :attr:`received`."""

    def __init__(self) -> None:
        self.received: str | None = None  # name of the first stop signal received
        self.signals: tuple[signal.Signals, ...] = ()

    def _handler(self, signum: int, _frame) -> None:
        if self.received is None:
            self.received = signal.Signals(signum).name

    def install(self, names) -> None:
        """Catch ``names`` from now on (main thread only; later calls add signals)."""
        for sig in (signal_of(n) for n in names):
            if sig not in self.signals:
                signal.signal(sig, self._handler)
                self.signals += (sig,)

    def configure(self, names) -> None:
        """Catch exactly ``names``: signals caught so far but not named get their default
        action back, and one of them that already arrived is delivered again (it terminates)."""
        wanted = [signal_of(n) for n in names]
        for sig in [s for s in self.signals if s not in wanted]:
            signal.signal(sig, signal.SIG_DFL)
            self.signals = tuple(s for s in self.signals if s != sig)
            if self.received == sig.name:
                self.received = None
                os.kill(os.getpid(), sig)
        self.install(wanted)

    def agreed(self, device=None) -> bool:
        """True on every rank when any rank received a stop signal (collective: every rank
        calls it after the same optimizer step)."""
        import torch
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return self.received is not None
        flag = torch.tensor([1.0 if self.received else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() > 0 and self.received is None:
            self.received = "a stop signal on another rank"
        return flag.item() > 0


_FLAG = StopFlag()


def install_stop_signals(names, exactly: bool = False) -> StopFlag:
    """The process's stop flag, catching ``names`` too (``exactly``: only them). Call it as
    early as possible: a stop signal that arrives before it kills the process by its default
    action. ``python -m hpcdiff train`` catches the default signals before any import and
    narrows them to ``run.stop_signals`` once the config is read."""
    _FLAG.configure(names) if exactly else _FLAG.install(names)
    return _FLAG


def catch_early(argv: list[str]) -> None:
    """For ``hpcdiff train``: catch the default stop signals from the first moment (a Slurm
    signal may come seconds after the job starts, before the config is read)."""
    if argv[:1] == ["train"]:
        install_stop_signals(DEFAULT_STOP_SIGNALS)


def slurm_job_id(environ=os.environ) -> str | None:
    """The id `scontrol requeue` needs: ``ARRAYJOB_TASK`` for an array task, else the job id;
    None outside a Slurm job."""
    array, task = environ.get("SLURM_ARRAY_JOB_ID"), environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return environ.get("SLURM_JOB_ID") or None


def check_requeue(mode: str, resume: str, environ=os.environ) -> None:
    """Before any work: ``run.requeue: always`` needs a Slurm job and a requeued job must
    resume (``checkpoint.resume: latest``). Raises ConfigError naming the key."""
    from hpcdiff.config import ConfigError

    if mode == "always" and slurm_job_id(environ) is None:
        raise ConfigError(
            "config key 'run.requeue' is 'always' but this is not a Slurm job (SLURM_JOB_ID "
            "is unset); use auto or never"
        )
    if mode == "always" and resume != "latest":
        raise ConfigError(
            f"config key 'run.requeue' is 'always' but checkpoint.resume is {resume!r}: a "
            "requeued job would not continue; set checkpoint.resume=latest"
        )


def resume_command(launcher: str, resume: str, argv: list[str] | None = None) -> str:
    """The command line that continues this run: the same ``hpcdiff`` arguments (plus
    ``checkpoint.resume=latest`` when the run was not resuming), under the same launcher."""
    argv = list(sys.argv if argv is None else argv)
    args = argv[1:] + ([] if resume == "latest" else ["checkpoint.resume=latest"])
    cmd = shlex.join([sys.executable, "-m", "hpcdiff", *args])
    if launcher == "none":
        return cmd
    return f"{cmd}  (under the same {launcher} launch as this one)"


def job_state(job: str) -> str | None:
    """The job's JobState in `scontrol show job` (None if it cannot be read)."""
    try:
        out = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True,
                             text=True, timeout=60)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    fields = dict(f.split("=", 1) for f in out.stdout.split() if "=" in f)
    return fields.get("JobState")


def requeue(job: str) -> str | None:
    """``scontrol requeue JOB``; None on success, else the reason it failed."""
    try:
        out = subprocess.run(
            ["scontrol", "requeue", job], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return str(err)
    return None if out.returncode == 0 else (out.stderr or out.stdout).strip()


def conclude(
    path: Path, step: int, flag: StopFlag, mode: str, resume: str, launcher: str, rank: int
) -> TrainingStopped:
    """After the stop checkpoint ``path``: verify it (collective), then rank 0 requeues the
    Slurm job (``mode`` auto/always, only if it verified and the run resumes from latest; auto
    only a job still RUNNING, not one being cancelled) or prints the command that resumes. Returns
    the exception the trainer raises at its end."""
    from hpcdiff.distributed.checkpoint import verify_checkpoint

    problems = verify_checkpoint(path)
    job = slurm_job_id()
    want = mode != "never" and job is not None and resume == "latest"
    requeued = False
    if rank == 0:  # rank 0's INFO records reach the console too (hpcdiff.logs)
        log.info("%s: stopped after step %d, checkpoint %s", flag.received, step, path)
        if problems:
            log.error("the stop checkpoint %s does not verify: %s", path, "; ".join(problems))
        elif want and mode == "auto" and (state := job_state(job)) not in ("RUNNING", None):
            # COMPLETING: cancelled (scancel), or the time limit came before --signal did
            log.info("Slurm job %s is %s, not RUNNING (cancelled or at its time limit): not "
                     "requeued", job, state)  # fmt: skip
        elif want:
            failure = requeue(job)
            requeued = failure is None
            if failure:
                log.error("scontrol requeue %s failed: %s", job, failure)
            else:
                log.info("requeued Slurm job %s; it resumes from %s", job, path)
        if not requeued:
            log.warning("to resume, run: %s", resume_command(launcher, resume))
    return TrainingStopped(step, flag.received or "a stop signal", requeued)
