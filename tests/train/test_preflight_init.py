"""What `hpcdiff train` checks before its first step (the same with --dry-run), a finished run
asked to train again, and `model.init_from` (fine-tuning from an hpcdiff or a PhysicsNeMo
.mdlus) on one process and on 2 ranks at ZeRO-3 with partitioned construction."""

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from unittest import mock

import pytest
import torch
import yaml

from hpcdiff.core import Module

BIN = Path(sys.executable).parent
TORCHRUN = (str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    work = tmp_path_factory.mktemp("preflight")
    subprocess.run(
        [BIN / "hpcdiff", "data", "synth", "--out", "data", "--shape", "32", "32",
         "--times", "6", "--files", "1"],
        cwd=work, check=True, capture_output=True,
    )  # fmt: skip
    data = yaml.safe_load((work / "data" / "data.yaml").read_text())["data"]
    data.update(batch_size=1, patch_shape=[16, 16], patches_per_sample=1)
    cfg = {
        "run": {"name": "a", "steps": 2, "log_every": 1},
        "data": data,
        "model": {"name": "SongUNet-S", "args": {"model_channels": 8, "channel_mult": [1],
                                                  "num_blocks": 1, "attn_resolutions": []}},
        "optim": {"lr": 1e-3},
        "zero": {"stage": 1},
        "ema": {"halflife_samples": 10},
        "checkpoint": {"every_steps": 2},
        "sample": {"overlap_pix": 4},
    }  # fmt: skip
    (work / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    return work


def hpcdiff(work, *args, launcher=()):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [*launcher, *(["-m", "hpcdiff"] if launcher else [BIN / "hpcdiff"]), *args]
    return subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)


def ok(out):
    assert out.returncode == 0, f"{out.args} failed:\n{out.stdout}\n{out.stderr}"
    return out


def error_line(out) -> str:
    lines = [line for line in out.stderr.splitlines() if "error:" in line]
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert "Traceback" not in out.stderr
    return lines[0]


@pytest.mark.parametrize(
    "override, expected",
    [
        ("data.valid_time=[2031-01-01, 2031-01-02]", "config key 'data.valid_time': no target"),
        ("sample.overlap_pix=16", "config key 'sample.overlap_pix': overlap_pix + 2 *"),
    ],
)
def test_dry_run_checks_what_the_run_checks(work, override, expected):
    real = error_line(hpcdiff(work, "train", "--config", "tiny.yaml", override, "run.name=x"))
    dry = error_line(hpcdiff(work, "train", "--config", "tiny.yaml", override, "--dry-run"))
    assert expected in real and dry == real  # the same message, exit code 2
    assert not (work / "runs" / "x").exists()
    if override.startswith("sample."):  # a rule between keys: config check knows it too
        check = error_line(hpcdiff(work, "config", "check", "--config", "tiny.yaml", override))
        assert check.split("error: ")[1] == real.split("error: ")[1]


def test_finished_run_says_so_in_one_line(work, monkeypatch, capsys):
    ok(hpcdiff(work, "train", "--config", "tiny.yaml", "run.name=done"))
    metrics = (work / "runs" / "done" / "metrics.jsonl").read_text()
    again = ok(hpcdiff(work, "train", "--config", "tiny.yaml", "run.name=done"))
    finished = [line for line in again.stderr.splitlines() if "is finished" in line]
    assert len(finished) == 1 and "raise run.steps (e.g. run.steps=4)" in finished[0]
    assert (work / "runs" / "done" / "metrics.jsonl").read_text() == metrics  # nothing trained
    # Decided before any engine is built (reruns of finished runs are cheap).
    from hpcdiff.experiment.config import load_config
    from hpcdiff.train import loop

    monkeypatch.chdir(work)
    monkeypatch.setattr(loop, "build_engine", lambda *a, **k: pytest.fail("engine built"))
    with mock.patch.dict(os.environ):  # init_distributed exports RANK, MASTER_PORT, ...
        assert loop.train(load_config("tiny.yaml", ["run.name=done"])) == Path("runs/done")
    assert "is finished" in capsys.readouterr().err


def _state(path) -> dict:
    return Module.from_checkpoint(path).state_dict()


def _assert_weights_equal(got: dict, want: dict, prefix: str = "") -> None:
    # optim.lr=1e-30: one AdamW step cannot move a float32 weight (except exact zeros, by 1e-30)
    for key, value in want.items():
        torch.testing.assert_close(got[prefix + key], value, rtol=1e-6, atol=1e-20, msg=key)


@pytest.mark.slow
def test_init_from_a_consolidated_run(work):
    ok(hpcdiff(work, "train", "--config", "tiny.yaml", "run.name=src"))
    ok(hpcdiff(work, "checkpoint", "consolidate", "runs/src"))  # EMA weights, whole module
    src = _state(work / "runs" / "src" / "model.mdlus")
    args = ["run.name=ft", "run.seed=7", "model.init_from=runs/src/model.mdlus"]
    out = ok(
        hpcdiff(work, "train", "--config", "tiny.yaml", *args, "optim.lr=1e-30", "run.steps=1")
    )
    start = json.loads(next(x for x in out.stdout.splitlines() if x.startswith("{")))
    assert start["init_from"].endswith(f"-> the whole model: loaded {len(src)} tensors")
    ok(hpcdiff(work, "checkpoint", "consolidate", "runs/ft", "--weights", "model"))
    _assert_weights_equal(_state(work / "runs" / "ft" / "model.mdlus"), src)


def _physicsnemo_file(path: Path, backbone: Module, drop: str, extra: str) -> dict:
    """A PhysicsNeMo-layout .mdlus of ``backbone`` with random weights, one tensor left out
    and one unknown tensor added; returns the weights written."""
    g = torch.Generator().manual_seed(5)
    state = {k: torch.randn(v.shape, generator=g) for k, v in backbone.state_dict().items()}
    written = {k: v for k, v in state.items() if k != drop}
    blob = io.BytesIO()
    torch.save({**written, extra: torch.zeros(3)}, blob)
    spec = {"__name__": "SongUNet", "__module__": "physicsnemo.models.diffusion_unets.song_unet",
            "__args__": backbone.init_args}  # fmt: skip
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("args.json", json.dumps(spec))
        zf.writestr("metadata.json", json.dumps({"physicsnemo_version": "2.2.2"}))
        zf.writestr("model.pt", blob.getvalue())
    return written


@pytest.mark.slow
@pytest.mark.multiprocess
def test_init_from_physicsnemo_partial_on_two_ranks_zero3(work):
    from hpcdiff.experiment.config import load_config
    from hpcdiff.models import SongUNet
    from hpcdiff.train.loop import build_objective

    cfg = load_config(work / "tiny.yaml")
    objective = build_objective(cfg, (32, 32))
    name, backbone = next((n, m) for n, m in objective.named_modules() if type(m) is SongUNet)
    drop = next(k for k in backbone.state_dict() if k.endswith(".weight"))
    written = _physicsnemo_file(work / "pn.mdlus", backbone, drop, "legacy.extra")
    args = ["train", "--config", "tiny.yaml", "model.init_from=pn.mdlus", "run.name=pn"]
    strict = error_line(hpcdiff(work, *args, "--dry-run"))
    assert f"1 missing ['{drop}']" in strict and "1 unexpected ['legacy.extra']" in strict
    assert "model.init_strict=false" in strict
    out = ok(hpcdiff(work, *args, "model.init_strict=false", "optim.lr=1e-30", "run.steps=1",
                     "zero.stage=3", "zero.init_on_construct=true", launcher=TORCHRUN))  # fmt: skip
    start = json.loads(next(x for x in out.stdout.splitlines() if x.startswith("{")))
    assert f"-> {name}: loaded {len(written)} tensors" in start["init_from"]
    ok(hpcdiff(work, "checkpoint", "consolidate", "runs/pn", "--weights", "model"))
    got = _state(work / "runs" / "pn" / "model.mdlus")
    _assert_weights_equal(got, written, prefix=f"{name}.")
    assert not torch.equal(got[f"{name}.{drop}"], torch.zeros_like(got[f"{name}.{drop}"]))
