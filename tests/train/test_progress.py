"""Progress bars, per-rank log files and TensorBoard scalars of a run."""

import io
import json
import logging
import re
import sys
import warnings

import pytest
import torch

from hpcdiff.config import ConfigError
from hpcdiff.diffusion.samplers import sample
from hpcdiff.logs import close_logging, setup_logging
from hpcdiff.progress import SamplingProgress, TrainProgress, show_progress
from hpcdiff.train import metrics
from hpcdiff.train.metrics import MetricsLogger


class TTY(io.StringIO):
    """A captured stream that claims to be a terminal."""

    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def _reset_logging():
    yield
    close_logging()


# Progress bars ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mode, rank, stream, shown",
    [("auto", 0, TTY, True), ("always", 0, io.StringIO, True), ("auto", 0, io.StringIO, False),
     ("never", 0, TTY, False), ("always", 1, TTY, False), ("auto", 3, TTY, False)],
)  # fmt: skip
def test_training_bar_only_on_rank0_when_allowed(mode, rank, stream, shown):
    out = stream()
    progress = TrainProgress(10, rank=rank, mode=mode, stream=out)
    for step in (1, 2, 3):
        progress.update(step)
    progress.close()
    assert progress.active == shown == show_progress(mode, rank, out)
    assert ("3/10" in out.getvalue()) == shown
    assert shown or out.getvalue() == ""


def test_unknown_progress_mode_is_rejected():
    with pytest.raises(ValueError, match="'sometimes'"):
        TrainProgress(10, mode="sometimes")


def test_resumed_bar_starts_at_resume_step_and_eta_uses_rate_since_restart(monkeypatch):
    clock = Clock()
    monkeypatch.setattr("tqdm.std.time", clock)
    out = TTY()
    progress = TrainProgress(100, start_step=40, mode="auto", stream=out)
    assert "40/100" in out.getvalue()
    clock.now += 20.0
    progress.update(50)  # 10 steps in 20 s since the restart: 50 steps left take 100 s
    assert "50/100 [00:20<01:40,  2.00s/step]" in str(progress.bar)
    clock.now += 2.0
    progress.update(60)  # the ETA uses the average rate (20 steps in 22 s), not the latest
    assert "60/100 [00:22<00:44,  1.10s/step]" in str(progress.bar)
    progress.set_metrics({"step": 60, "loss": 0.125, "patches_per_s": 512.0, "lr": 1e-3})
    progress.set_metrics({"step": 60, "val_loss": 0.25})  # keeps the training values
    shown = "1.10s/step, loss=0.125, patches/s=512, lr=0.001, val_loss=0.25]"
    assert str(progress.bar).endswith(shown)
    progress.close()


def test_metrics_lines_without_bar_carry_eta(tmp_path, monkeypatch, capsys):
    clock = Clock(0.0)
    monkeypatch.setattr(metrics.time, "perf_counter", clock)
    logger = MetricsLogger(tmp_path, 0, total_steps=10, start_step=2, progress="never")
    clock.now = 4.0  # 2 steps in 4 s, 6 left
    logger.log({"step": 4, "loss": 0.5, "patches_per_s": 8.0})
    logger.close()
    assert capsys.readouterr().out.strip() == "step=4 loss=0.5 patches_per_s=8 eta=00:12"
    rows = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == [{"time_s": 4.0, "step": 4, "loss": 0.5, "patches_per_s": 8.0}]


def test_metrics_with_bar_show_loss_in_bar_not_as_lines(tmp_path, capsys):
    out = TTY()
    logger = MetricsLogger(tmp_path, 0, total_steps=4, progress="auto", stream=out)
    for step in (1, 2):
        logger.advance(step)
    logger.log({"step": 2, "loss": 0.75, "patches_per_s": 64.0})
    logger.close()
    assert capsys.readouterr().out == ""
    assert "2/4" in out.getvalue() and "loss=0.75, patches/s=64" in out.getvalue()


class _CountedSolver:
    """Euler steps of dx/dt = -x reporting each step, as generate code wraps its solver."""

    def __init__(self, on_step):
        self.on_step = on_step

    def step(self, x, t_cur, t_next):
        x_next = x + (t_next - t_cur)[:, None] * -x  # t: (B,), x: (B, C)
        self.on_step()
        return x_next


class _Linear:
    def timesteps(self, num_steps, *, device=None, dtype=None):
        return torch.linspace(1.0, 0.0, num_steps + 1, device=device, dtype=dtype)


def test_sampling_bar_counts_solver_steps_per_time():
    out = io.StringIO()
    with SamplingProgress(4, items=3, rank=0, mode="always", stream=out) as progress:
        for _ in range(2):  # two of the three times
            sample(None, torch.ones(2, 3), _Linear(), 4, solver=_CountedSolver(progress.on_step))
        assert progress.bar.n == 8
    assert "8/12" in out.getvalue() and "time 2/3 step 4/4" in out.getvalue()
    silent = SamplingProgress(4, rank=1, mode="always", stream=out)
    silent.on_step()
    assert not silent.active
    with pytest.raises(ValueError, match="num_steps must be >= 1, got 0"):
        SamplingProgress(0, rank=0)


# Per-rank log files -------------------------------------------------------------------------

LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \[rank (\d+)\] (\w+) ([\w.]+): (.*)$")


def _records(path):
    """(rank, level, logger, message) per record; continuation lines join the message."""
    records = []
    for line in path.read_text().splitlines():
        match = LINE.match(line)
        if match is None:
            records[-1] = (*records[-1][:3], f"{records[-1][3]}\n{line}")
        else:
            records.append(match.groups())
    return records


def test_every_rank_writes_its_file_console_shows_rank0_info_and_all_warnings(tmp_path, capsys):
    log = logging.getLogger("hpcdiff.data.loader")
    for rank in (0, 3):  # as two processes would, one after the other
        path = setup_logging(tmp_path / "run", rank)
        assert path == tmp_path / "run" / "logs" / f"rank{rank:05d}.log"
        log.info("opened %d files", rank)
        log.debug("not at INFO")
        log.warning("time %d is all missing", rank)
    close_logging()
    for rank in (0, 3):
        records = _records(tmp_path / "run" / "logs" / f"rank{rank:05d}.log")
        assert [r[0] for r in records] == [str(rank)] * 3
        assert records[0][1:3] == ("INFO", "hpcdiff.logs")  # header: pid and host
        assert records[1:] == [
            (str(rank), "INFO", "hpcdiff.data.loader", f"opened {rank} files"),
            (str(rank), "WARNING", "hpcdiff.data.loader", f"time {rank} is all missing"),
        ]
    assert capsys.readouterr().err.splitlines() == [
        "opened 0 files",
        "[rank 0] WARNING hpcdiff.data.loader: time 0 is all missing",
        "[rank 3] WARNING hpcdiff.data.loader: time 3 is all missing",
    ]
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert written == ["run/logs/rank00000.log", "run/logs/rank00003.log"]


def test_setup_twice_does_not_duplicate_and_debug_level_reaches_file(tmp_path, capsys):
    setup_logging(tmp_path, 0)
    path = setup_logging(tmp_path, 0, level="DEBUG")
    logging.getLogger("hpcdiff.train.loop").debug("detail")
    logging.getLogger("hpcdiff.train.loop").info("once")
    assert capsys.readouterr().err == "once\n"
    messages = [r[3] for r in _records(path) if r[2] != "hpcdiff.logs"]
    assert messages == ["detail", "once"]
    assert len(logging.getLogger("hpcdiff").handlers) == 2
    with pytest.raises(ValueError, match="'LOUD'"):
        setup_logging(tmp_path, 0, level="LOUD")


def test_python_warnings_are_captured_into_the_log(tmp_path, capsys):
    path = setup_logging(tmp_path, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("patch larger than tile", UserWarning, stacklevel=1)
    records = _records(path)
    assert records[-1][:3] == ("2", "WARNING", "py.warnings")
    assert "UserWarning: patch larger than tile" in records[-1][3]
    assert path.read_text().endswith("stacklevel=1)\n")  # no blank line after the record
    err = capsys.readouterr().err
    assert err.startswith("[rank 2] WARNING py.warnings: ") and err.endswith("stacklevel=1)\n")
    close_logging()
    package = logging.getLogger("hpcdiff")
    assert package.handlers == [] and package.propagate and package.level == logging.NOTSET


# TensorBoard --------------------------------------------------------------------------------


def test_tensorboard_scalars_read_back_and_resume_hides_later_events(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    first = MetricsLogger(tmp_path, 0, total_steps=3, progress="never", tensorboard=True)
    for step in (1, 2):
        first.log({"step": step, "loss": 1.0 / step, "loss_per_channel": {"u10": 2.0 / step},
                   "lr": 1e-3, "patches_per_s": 100.0, "peak_rss_mib": 512.0,
                   "peak_device_mib": None})  # fmt: skip
    first.log({"step": 2, "val_loss": 0.75})
    first.close()
    resumed = MetricsLogger(tmp_path, 0, total_steps=3, start_step=1, progress="never",
                            tensorboard=True)  # fmt: skip
    resumed.log({"step": 2, "loss": 0.125})
    resumed.close()

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss", "loss_per_channel/u10", "lr", "patches_per_s", "peak_rss_mib",
            "val_loss"} <= tags  # fmt: skip
    assert "peak_device_mib" not in tags and "time_s" not in tags

    def series(tag):
        return [(e.step, e.value) for e in events.Scalars(tag)]

    assert series("loss") == [(1, 1.0), (2, 0.125)]  # step 2 of the first attempt purged
    assert series("loss_per_channel/u10") == [(1, 2.0)]
    assert series("lr") == [(1, pytest.approx(1e-3))]


def test_missing_tensorboard_names_the_config_key(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed
    for rank in (0, 1):
        with pytest.raises(ConfigError, match=r"'run\.tensorboard' is true .* not installed"):
            MetricsLogger(tmp_path, rank, total_steps=3, tensorboard=True)
    assert not (tmp_path / "metrics.jsonl").exists()
    MetricsLogger(tmp_path, 0, total_steps=3, progress="never").close()  # off: no package needed
