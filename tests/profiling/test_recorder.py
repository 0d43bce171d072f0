"""The NVTX recorder (profiling/nvtx_recorder.c) under real runs (the README's commands):
2-rank torchrun training with ZeRO-1 and with ZeRO-3 + block ranges, 2-rank tiled sampling
with block ranges and single-process sampling; nesting and balance are checked on every rank
in every domain (DeepSpeed's forwarded ranges too), and the summarizer's arithmetic on a
hand-written log."""

import pytest
import torch
import yaml
from profhelpers import DOCTOR, PROFILING, STEPS, readme_run, run

from hpcdiff.models.registry import create_model
from hpcdiff.nvtx import DEEPSPEED_DOMAIN, known

IN_STEP = ("train.data", "train.forward", "train.loss", "train.backward", "train.optim")
LOGS = ("train", "zero3", "sample", "sample2")


@pytest.fixture(scope="module")
def recorded(tiny_run, trained, summarize):
    """Logs of the README's recorder commands, per process; and their printed tables."""
    out = {"train_stdout": trained}
    for key in ("rec_zero3", "rec_sample", "rec_sample2", "rec_deepspeed"):
        out[f"{key[4:]}_stdout"] = readme_run(key, cwd=tiny_run).stdout
    return out | {key: summarize.read_recorder_dir(tiny_run / "logs" / key) for key in LOGS}


@pytest.fixture(scope="module")
def block_names(tiny_run):
    """model.enc.<i> then model.dec.<i> for every entry of the tiny SongUNet, in call order."""
    args = yaml.safe_load((tiny_run / "tiny.yaml").read_text())["model"]["args"]
    with torch.device("meta"):
        net = create_model("SongUNet-S", 16, 4, **args)
    return [f"model.enc.{i}" for i in range(len(net.enc))] + [
        f"model.dec.{i}" for i in range(len(net.dec))
    ]


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
        assert all(known(r.name) for r in hp)
        assert not any(r.name.startswith("model.") for r in hp)  # model_ranges is off
    assert "NVTX ranges over 2 rank(s)" in recorded["train_stdout"]


def _inside(outer, ranges):
    return [r for r in ranges if r is not outer and r.tid == outer.tid
            and outer.start_ns <= r.start_ns <= r.end_ns <= outer.end_ns]  # fmt: skip


def _in_phase(proc, ds_name, phase):
    """DeepSpeed's ranges named ``ds_name``: all of them, and those inside hpcdiff's ``phase``."""
    found = [r for r in proc.ranges if r.domain == DEEPSPEED_DOMAIN and r.name == ds_name]
    phases = [r for r in proc.ranges if r.domain == "hpcdiff" and r.name == phase]
    inside = [r for p in phases for r in _inside(p, found)]
    return found, inside


def test_deepspeed_ranges_are_forwarded_balanced_inside_the_phases_on_every_rank(recorded):
    procs = [p for p in recorded["train"] if p.ranges]
    assert sorted(p.rank for p in procs) == [0, 1]
    for proc in procs:  # errors cover every (thread, domain) stack
        assert proc.errors == []
        for name, phase in (("forward", "train.forward"), ("backward", "train.backward")):
            found, inside = _in_phase(proc, f"DeepSpeedEngine.{name}", phase)
            assert len(found) == len(inside) == STEPS, (proc.label, name)
    for proc in [p for p in recorded["zero3"] if p.ranges]:
        assert proc.errors == []
        found, inside = _in_phase(proc, "DeepSpeedZeroOptimizer_Stage3.step", "train.optim")
        assert len(found) == len(inside) == STEPS
        _, fetches = _in_phase(
            proc, "PartitionedParameterCoordinator.fetch_sub_module", "train.forward"
        )
        assert fetches and all(r.path[:1] == ("DeepSpeedEngine.forward",) for r in fetches)
    assert sorted(p.rank for p in recorded["zero3"] if p.ranges) == [0, 1]
    table = recorded["deepspeed_stdout"]
    assert "NVTX ranges over 2 rank(s)" in table and "DeepSpeedZeroOptimizer_Stage3.step" in table
    assert "train.step" not in table  # the hpcdiff domain is not mixed in


def test_block_ranges_nest_in_every_backbone_call_on_every_rank(recorded, block_names):
    for key, outer in (("zero3", "train.forward"), ("sample2", "model.forward")):
        procs = [p for p in recorded[key] if p.ranges]
        assert sorted(p.rank for p in procs) == [0, 1]
        for proc in procs:
            assert proc.errors == []
            hp = [r for r in proc.ranges if r.domain == "hpcdiff"]
            calls = [r for r in hp if r.name == outer]
            assert len(calls) >= STEPS
            for call in calls:  # the blocks in call order, one backbone call or several
                inner = sorted(_inside(call, hp), key=lambda r: r.start_ns)
                blocks = [r.name for r in inner if r.name.startswith("model.")]
                assert blocks and blocks == block_names * (len(blocks) // len(block_names))
                assert all(r.path[-1] == outer for r in inner if r.name.startswith("model."))
    sample = [r for p in recorded["sample"] for r in p.ranges]
    assert not any(r.name.startswith("model.") and r.name != "model.forward" for r in sample)


def test_sampling_records_one_balanced_sample_range(recorded):
    procs = [p for p in recorded["sample"] if p.ranges]
    assert len(procs) == 1 and procs[0].errors == []
    samples = [r for r in procs[0].ranges if r.name == "sample"]
    assert len(samples) == 1 and samples[0].path == () and samples[0].domain == "hpcdiff"
    assert (
        "sample" in recorded["sample_stdout"]
        and "NVTX ranges over 1 rank" in (recorded["sample_stdout"])
    )


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
        assert all(known(r.name) for r in hp)


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


def test_summarizer_shows_one_domain_or_all_of_them_qualified(tmp_path, summarize, capsys):
    ds = "DeepSpeedZeRoOffload._register_deepspeed_module.<locals>._run_before_backward_function"
    log = ["# pid 10 rank 0 ppid 1", "0\t7\tpush\t0\thpcdiff\ttrain.step",
           "2\t7\tpush\t0\tDeepSpeed\tDeepSpeedEngine.backward", f"3\t7\tpush\t0\tDeepSpeed\t{ds}",
           "5\t7\tpop\t0\tDeepSpeed\t", "6\t7\tpop\t0\tDeepSpeed\t",
           "8\t7\tpop\t0\thpcdiff\t", "9\t7\tpush\t0\t\tplain", "10\t7\tpop\t0\t\t"]  # fmt: skip
    (tmp_path / "nvtx-10.tsv").write_text("\n".join(log) + "\n")
    (proc,) = summarize.read_recorder_dir(tmp_path)
    assert proc.errors == []  # DeepSpeed's pops close DeepSpeed's pushes
    assert next(r for r in proc.ranges if r.name == ds).path == ("DeepSpeedEngine.backward",)
    assert summarize.totals_from_process(proc, "DeepSpeed") == {
        "DeepSpeedEngine.backward": (1, 4.0), ds: (1, 2.0)}  # fmt: skip
    every = summarize.totals_from_process(proc, None)
    assert sorted(every) == ["DeepSpeed:DeepSpeedEngine.backward", f"DeepSpeed:{ds}",
                             "hpcdiff:train.step", "plain"]  # fmt: skip
    assert summarize.main(["--domain", "", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "% hpcdiff:train.step" in lines[1] and len({len(line) for line in lines[1:]}) == 1
    row = next(line.split() for line in lines if line.startswith("DeepSpeed:DeepSpeedEngine"))
    assert row[1:] == ["1", "0.000", "0.000", "50.0", "1.00"]  # 4 ns of the 8 ns step
    assert any(line.startswith("...") and "_run_before_backward_function" in line for line in lines)


def test_doctor_fails_without_a_tool_and_passes_under_the_recorder(tmp_path):
    bare = run(DOCTOR, cwd=tmp_path, env={"HPCDIFF_NVTX": "1"}, check=False)
    assert bare.returncode == 1 and "no NVTX tool is attached" in bare.stdout
    off = run([PROFILING / "nvtx_record", "--", *DOCTOR], cwd=tmp_path, env={"HPCDIFF_NVTX": "0"},
              check=False)  # fmt: skip
    assert off.returncode == 1 and "profiling.nvtx: true" in off.stdout
    on = run([PROFILING / "nvtx_record", "--", *DOCTOR, "--json"], cwd=tmp_path)
    assert '"domain": "Domain"' in on.stdout and '"ok": true' in on.stdout
