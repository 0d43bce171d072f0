"""Real Nsight Systems (Debian's nsight-systems 2022.4, installed by scripts/ci_nsight.sh):
2-rank training under the torchrun, srun and mpirun recipes of profiling/nsys_profile.sh,
2-rank tiled sampling under the torchrun recipe and `hpcdiff profile doctor` under
`nsys profile` (the README's commands), with the ranges read back from `nsys stats` by
profiling/summarize.py. Slurm comes from scripts/ci_services.sh."""

import pytest
from profhelpers import DOCTOR, NSYS, ROOT, STEPS, readme_run, run

from hpcdiff.nvtx import RANGE_NAMES

IN_STEP = ("train.data", "train.forward", "train.loss", "train.backward", "train.optim")
SAMPLING = ("sample", "sample.step", "sample.denoise", "patch.extract", "model.forward",
            "patch.fuse", "comm.halo")  # fmt: skip


@pytest.fixture(scope="module")
def nsys_dir(tiny_run):
    """Install nsys (no-op when present) and start the one-node Slurm (no-op when up)."""
    run([ROOT / "scripts" / "ci_nsight.sh", "install"], cwd=ROOT, timeout=900)
    run([ROOT / "scripts" / "ci_services.sh", "start"], cwd=ROOT, timeout=300)
    return tiny_run


def _recipe(work, launcher):
    env = {"SLURM_CONF": "/var/tmp/hpcdiff-slurm/slurm.conf"}
    return readme_run(f"nsys_{launcher}", cwd=work, env=env).stdout


def _check_rank(totals):
    assert all(totals[n][0] == STEPS for n in ("train.step", *IN_STEP)), totals
    assert 0 < sum(totals[n][1] for n in IN_STEP) <= totals["train.step"][1]  # nested inside
    assert set(totals) <= set(RANGE_NAMES)


def _step_row(table, work, key):
    again = readme_run(key, cwd=work).stdout
    assert again.strip() in table
    assert "NVTX ranges over 2 rank(s)" in table
    row = next(line.split() for line in table.splitlines() if line.startswith("train.step"))
    assert row[1] == str(2 * STEPS) and row[4] == "100.0"


def test_torchrun_recipe_one_report_split_per_rank(nsys_dir, summarize):
    table = _recipe(nsys_dir, "torchrun")
    both = summarize.totals_from_nsys_csv((nsys_dir / "torchrun.csv").read_text())
    assert all(both[n][0] == 2 * STEPS for n in ("train.step", *IN_STEP))
    per_pid = summarize.totals_from_nsys_sqlite(nsys_dir / "torchrun.sqlite")
    assert len(per_pid) == 2
    for totals in per_pid.values():
        _check_rank(totals)
    _step_row(table, nsys_dir, "sum_torchrun")


@pytest.mark.parametrize("launcher", ["srun", "mpirun"])
def test_srun_and_mpirun_recipes_write_one_report_per_rank(nsys_dir, summarize, launcher):
    table = _recipe(nsys_dir, launcher)
    for rank in (0, 1):
        _check_rank(
            summarize.totals_from_nsys_csv((nsys_dir / f"{launcher}_{rank}.csv").read_text())
        )
    _step_row(table, nsys_dir, f"sum_{launcher}")


def test_distributed_sampling_shows_every_sampler_range_on_both_ranks(nsys_dir, trained,
                                                                      summarize):  # fmt: skip
    table = readme_run("nsys_sample", cwd=nsys_dir).stdout
    per_pid = summarize.totals_from_nsys_sqlite(nsys_dir / "sampling.sqlite")
    assert len(per_pid) == 2
    for totals in per_pid.values():
        assert set(SAMPLING) <= set(totals) <= set(RANGE_NAMES), totals
        assert totals["sample"][0] == 1  # one validation time, one sampling run
        assert totals["sample.step"][0] == 2  # sample.num_steps of tiny.yaml
        assert totals["sample.denoise"][0] >= totals["sample.step"][0]
        assert totals["patch.fuse"][0] >= totals["sample.denoise"][0]  # every evaluation fuses
        inner = ("sample.denoise", "comm.halo")  # the step's work, nested in the root
        assert 0 < max(totals[n][1] for n in inner) <= totals["sample"][1]
    both = summarize.totals_from_nsys_csv((nsys_dir / "sampling.csv").read_text())
    assert all(both[n][0] == sum(t[n][0] for t in per_pid.values()) for n in SAMPLING)
    again = readme_run("sum_sample", cwd=nsys_dir).stdout
    assert again.strip() in table and "NVTX ranges over 2 rank(s)" in table
    row = next(line.split() for line in table.splitlines() if line.startswith("sample "))
    assert row[1] == "2" and row[4] == "100.0"


def test_doctor_explains_old_nsys_and_passes_with_compat(nsys_dir):
    env = {"HPCDIFF_NVTX": "1"}
    bare = run([*NSYS, "-o", "doc_plain", *DOCTOR], cwd=nsys_dir, env=env, check=False)
    assert bare.returncode == 1 and "profiling/nsys_compat" in bare.stdout
    assert "DummyDomain" in bare.stdout
    fixed = readme_run("doctor", cwd=nsys_dir, check=False)
    assert fixed.returncode == 0 and "ranges reach the tool" in fixed.stdout
