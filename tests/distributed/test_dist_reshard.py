"""Resume on another rank count and ZeRO stage, with no conversion step: the state after
loading equals the saved one exactly, and training continues like the uninterrupted run.

Each case trains the tiny worker for 23 steps (checkpoints every 3), then a second launch with
another world size / stage resumes from step 3 and trains to step 23. The engine's state is
read on both sides through DeepSpeed's own accessors (``safe_get_full_*``), independent of
hpcdiff's checkpoint code.
"""

from __future__ import annotations

import sys

import pytest
import torch
from distlaunch import ROOT, WORKER, read_result, run, worker_env

STEPS, RESUME_AT = 23, 3
# fp32 losses after resuming on another rank count: only the summation order of the gradient
# all-reduce and of the ZeRO partitions differs (a few ulp per step; measured max relative
# difference 2.0e-7 over 20 steps); 1e-5 is 50x that and still catches a wrong moment, step
# count or learning rate (each changes the losses by > 1e-3 within a few steps).
LOSS_RTOL = 1e-5


def _launch(world: int, args: list[str]) -> None:
    if world == 1:
        run([sys.executable, str(WORKER), *args], worker_env())
    else:
        run([str(ROOT / "launchers" / "torchrun.sh"), *args],
            worker_env(NPROC_PER_NODE=str(world)))  # fmt: skip


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Uninterrupted runs that also leave the checkpoints to resume from."""
    out, runs = tmp_path_factory.mktemp("reshard"), {}
    for key, world, stage, extra in (("z2", 2, 2, []), ("z3", 2, 3, ["--offload"])):
        args = [
            *("--out", str(out / f"{key}.json"), "--stages", str(stage), "--steps", str(STEPS)),
            *("--ckpt-dir", str(out), "--ckpt-name", key, "--ckpt-every", str(RESUME_AT)),
            *("--keep-last", "20", "--dump-state", str(out / f"{key}.pt")),
            *("--dump-step", str(RESUME_AT), *extra),
        ]
        _launch(world, args)
        runs[key] = {
            "losses": read_result(out / f"{key}.json")["runs"][stage]["losses"],
            "state": torch.load(out / f"{key}.pt", weights_only=True),
            "ckpt": out / key / f"step_{RESUME_AT:09d}",
        }
    return runs


@pytest.mark.multiprocess
@pytest.mark.slow
@pytest.mark.parametrize(
    "source,world,stage",
    [("z2", 1, 3), ("z2", 4, 1), ("z3", 1, 0)],
    ids=["2xZeRO2-to-1xZeRO3", "2xZeRO2-to-4xZeRO1", "2xZeRO3offload-to-1xZeRO0"],
)
def test_resume_on_another_rank_count_and_stage(saved, tmp_path, source, world, stage):
    ref = saved[source]
    args = [
        *("--out", str(tmp_path / "r.json"), "--stages", str(stage), "--steps", str(STEPS)),
        *("--ckpt-dir", str(tmp_path), "--ckpt-every", "100", "--resume"),
        *("--resume-from", str(ref["ckpt"]), "--dump-state", str(tmp_path / "s.pt")),
        *("--dump-step", str(RESUME_AT)),
    ]
    _launch(world, args)
    loaded = torch.load(tmp_path / "s.pt", weights_only=True)
    assert sorted(loaded) == sorted(ref["state"])
    for name, tensors in ref["state"].items():
        for what, want, got in zip(("fp32", "exp_avg", "exp_avg_sq", "ema"), tensors, loaded[name]):
            assert torch.equal(got, want), f"{name} {what} differs after resharding"
    result = read_result(tmp_path / "r.json")["runs"][stage]
    assert result["start"] == RESUME_AT
    steps = range(RESUME_AT, STEPS)
    assert [result["losses"][s] for s in steps] == pytest.approx(
        [ref["losses"][s] for s in steps], rel=LOSS_RTOL
    )
