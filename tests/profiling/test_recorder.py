"""The NVTX recorder (profiling/nvtx_recorder.c) under real runs: 2-rank torchrun training,
2-rank tiled sampling and single-process sampling; nesting and balance are checked on every
rank, and the summarizer's arithmetic on a hand-written log."""

import pytest
from profhelpers import DOCTOR, PROFILING, STEPS, TORCHRUN, run

from hpcdiff.nvtx import RANGE_NAMES

IN_STEP = ("train.data", "train.forward", "train.loss", "train.backward", "train.optim")


@pytest.fixture(scope="module")
def recorded(tiny_run, summarize):
    """Train 2 ranks under profiling/nvtx_record, then sample under it (README commands)."""
    train = run([PROFILING / "nvtx_record", "--out", "logs/train", "--", *TORCHRUN, "-m", "hpcdiff",
         "train", "--config", "tiny.yaml", "profiling.nvtx=true"], cwd=tiny_run)  # fmt: skip
    sample = run([PROFILING / "nvtx_record", "--out", "logs/sample", "--", "hpcdiff", "sample",
                  "runs/tiny"], cwd=tiny_run)  # fmt: skip
    run([PROFILING / "nvtx_record", "--out", "logs/sample2", "--", *TORCHRUN, "-m", "hpcdiff",
         "sample", "runs/tiny", "sample.domain_grid=[1,2]"], cwd=tiny_run)  # fmt: skip
    return {
        "train": summarize.read_recorder_dir(tiny_run / "logs" / "train"),
        "sample": summarize.read_recorder_dir(tiny_run / "logs" / "sample"),
        "sample2": summarize.read_recorder_dir(tiny_run / "logs" / "sample2"),
        "sample_stdout": sample.stdout,
        "train_stdout": train.stdout,
    }


def test_every_rank_has_balanced_nested_training_ranges(recorded):
    procs = [p for p in recorded["train"] if p.ranges]
    assert sorted(p.rank for p in procs) == [0, 1]
    for proc in procs:
        assert proc.errors == []  # no orphan pops, nothing left open
        hp = [r for r in proc.ranges if r.domain == "hpcdiff"]
        steps = sorted((r for r in hp if r.name == "train.step"), key=lambda r: r.start_ns)
        assert len(steps) == STEPS and all(r.path == () for r in steps)
        for step in steps:
            inside = {r.name for r in hp if step.start_ns <= r.start_ns <= r.end_ns <= step.end_ns
                      and r.tid == step.tid and r is not step}  # fmt: skip
            assert set(IN_STEP) <= inside, (proc.label, inside)
        for r in hp:
            if r.name in IN_STEP or r.name == "train.ema":
                assert r.path == ("train.step",), (r.name, r.path)
            if r.name.startswith("data."):
                assert r.path[:1] in ((), ("train.step",)) and r.path[-1:] != ("data.read",)
        assert {r.name for r in hp} <= set(RANGE_NAMES)
    assert "NVTX ranges over 2 rank(s)" in recorded["train_stdout"]


def test_sampling_records_one_balanced_sample_range(recorded):
    procs = [p for p in recorded["sample"] if p.ranges]
    assert len(procs) == 1 and procs[0].errors == []
    samples = [r for r in procs[0].ranges if r.name == "sample"]
    assert len(samples) == 1 and samples[0].path == () and samples[0].domain == "hpcdiff"
    assert (
        "sample" in recorded["sample_stdout"]
        and "NVTX ranges over 1 rank" in (recorded["sample_stdout"])
    )


def _inside(outer, ranges):
    return [r for r in ranges if r is not outer and r.tid == outer.tid
            and outer.start_ns <= r.start_ns <= r.end_ns <= outer.end_ns]  # fmt: skip


@pytest.mark.parametrize("key, ranks", [("sample", 1), ("sample2", 2)])
def test_every_sampler_step_denoises_and_fuses_and_halos_only_across_ranks(recorded, key, ranks):
    procs = [p for p in recorded[key] if p.ranges]
    assert len(procs) == ranks
    for proc in procs:
        assert proc.errors == []
        hp = [r for r in proc.ranges if r.domain == "hpcdiff"]
        steps = [r for r in hp if r.name == "sample.step"]
        assert steps and all(r.path[:1] == ("sample",) for r in steps)
        for step in steps:
            denoises = [r for r in _inside(step, hp) if r.name == "sample.denoise"]
            assert denoises, proc.label
            for d in denoises:
                assert {"patch.fuse", "model.forward"} <= {r.name for r in _inside(d, hp)}
        halos = [r for r in hp if r.name == "comm.halo"]
        assert bool(halos) == (ranks > 1), (proc.label, len(halos))
        assert {r.name for r in hp} <= set(RANGE_NAMES)


def test_summarizer_counts_nesting_errors_and_imbalance(tmp_path, summarize):
    # rank 0: two steps of 10 and 30 ns; rank 1: one step of 20 ns, then an orphan pop.
    log0 = ["# pid 10 rank 0 ppid 1", "0\t7\tpush\t0\thpcdiff\ttrain.step",
            "2\t7\tpush\t0\thpcdiff\ttrain.data", "5\t7\tpop\t0\thpcdiff\t",
            "10\t7\tpop\t0\thpcdiff\t", "20\t7\tpush\t0\thpcdiff\ttrain.step",
            "50\t7\tpop\t0\thpcdiff\t", "60\t8\tpush\t0\thpcdiff\ttrain.ckpt"]  # fmt: skip
    log1 = ["# pid 11 rank 1 ppid 1", "0\t9\tpush\t0\thpcdiff\ttrain.step",
            "20\t9\tpop\t0\thpcdiff\t", "21\t9\tpop\t0\thpcdiff\t",
            "22\t9\tstart\t5\t\tother", "25\t9\tend\t5\t\t"]  # fmt: skip
    (tmp_path / "nvtx-10.tsv").write_text("\n".join(log0) + "\n")
    (tmp_path / "nvtx-11.tsv").write_text("\n".join(log1) + "\n")
    # A data worker forked by rank 0 (same RANK in its environment): its ranges count for rank 0.
    worker = ["# pid 12 rank 0 ppid 10", "3\t12\tpush\t0\thpcdiff\tdata.read",
              "7\t12\tpop\t0\thpcdiff\t"]  # fmt: skip
    (tmp_path / "nvtx-12.tsv").write_text("\n".join(worker) + "\n")
    p0, pw, p1 = summarize.read_recorder_dir(tmp_path)
    assert (pw.pid, pw.errors) == (12, [])
    assert p0.errors == ["range 'train.ckpt' pushed on thread 8 was never popped"]
    assert p1.errors == ["orphan pop on thread 9 (domain 'hpcdiff')"]
    data = next(r for r in p0.ranges if r.name == "train.data")
    assert data.path == ("train.step",) and data.end_ns - data.start_ns == 3
    other = next(r for r in p1.ranges if r.name == "other")
    assert (other.domain, other.end_ns - other.start_ns) == ("", 3)
    per_rank = summarize.totals_by_rank([p0, pw, p1])
    assert per_rank["rank 0"]["data.read"] == (1, 4.0) and "data.read" not in per_rank["rank 1"]
    rows = {r["range"]: r for r in summarize.table(per_rank)}
    step = rows["train.step"]
    assert step["count"] == 3 and step["total_ms"] == pytest.approx(60e-6)
    assert step["mean_ms"] == pytest.approx(20e-6) and step["pct_root"] == pytest.approx(100.0)
    assert step["imbalance"] == pytest.approx(40 / 30)  # max 40 ns over mean 30 ns
    assert rows["train.data"]["pct_root"] == pytest.approx(100 * 3 / 60)
    assert rows["train.data"]["imbalance"] == pytest.approx(2.0)  # only rank 0 has it


def test_doctor_fails_without_a_tool_and_passes_under_the_recorder(tmp_path):
    bare = run(DOCTOR, cwd=tmp_path, env={"HPCDIFF_NVTX": "1"}, check=False)
    assert bare.returncode == 1 and "no NVTX tool is attached" in bare.stdout
    off = run([PROFILING / "nvtx_record", "--", *DOCTOR], cwd=tmp_path, env={"HPCDIFF_NVTX": "0"},
              check=False)  # fmt: skip
    assert off.returncode == 1 and "profiling.nvtx: true" in off.stdout
    on = run([PROFILING / "nvtx_record", "--", *DOCTOR, "--json"], cwd=tmp_path)
    assert '"domain": "Domain"' in on.stdout and '"ok": true' in on.stdout
