"""`hpcdiff checkpoint consolidate|inspect` on the checkpoints of a real 2-rank ZeRO-3 run.

The run (torchrun, DeepSpeed, 2 steps, a checkpoint after each) trains a tiny UNet on a 48 x 48
dataset written by `hpcdiff data synth`, with a fixed EMA decay of 1/2 so the EMA after step 1
is known in closed form: (theta_0 + theta_1) / 2.
"""

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tensordict import TensorDict

from hpcdiff.core import Module
from hpcdiff.diffusion.multi_diffusion import MultiDiffusionModel2D
from hpcdiff.distributed.checkpoint import read_manifest
from hpcdiff.experiment.build import DiffusionObjective
from hpcdiff.experiment.config import load_config
from hpcdiff.train import checkpoint_cli
from hpcdiff.train.loop import build_objective

pytestmark = pytest.mark.multiprocess  # the fixture's training run uses torchrun
BIN = Path(sys.executable).parent
STEP1, STEP2 = "checkpoints/step_000000001", "checkpoints/step_000000002"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Run directory of a 2-step, 2-rank ZeRO-3 training with checkpoints at steps 1 and 2."""
    work = tmp_path_factory.mktemp("ckpt_cli")
    subprocess.run(
        [BIN / "hpcdiff", "data", "synth", "--out", "data", "--shape", "48", "48",
         "--times", "8", "--files", "2"],
        cwd=work, check=True, capture_output=True,
    )  # fmt: skip
    data = yaml.safe_load((work / "data" / "data.yaml").read_text())["data"]
    data.update(batch_size=1, patch_shape=[16, 16], patches_per_sample=2)
    cfg = {
        "run": {"name": "tiny", "out_dir": str(work / "runs"), "steps": 2, "log_every": 1},
        "data": data,
        "model": {"name": "SongUNet-S", "args": {"model_channels": 8, "channel_mult": [1],
                                                  "num_blocks": 1, "attn_resolutions": []}},
        "optim": {"lr": 1e-2},
        "zero": {"stage": 3},
        "ema": {"decay": 0.5},
        "checkpoint": {"every_steps": 1, "keep_last": 2},
    }  # fmt: skip
    (work / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    out = subprocess.run(
        [BIN / "torchrun", "--standalone", "--nproc-per-node", "2", "-m", "hpcdiff", "train",
         "--config", "tiny.yaml"],
        cwd=work, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return work / "runs" / "tiny"


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="hpcdiff")
    checkpoint_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["checkpoint", *map(str, argv)])
    code = args.func(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def parameters(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in module.named_parameters()}


def test_inspect_prints_the_manifest_and_verifies_every_file(run, capsys):
    code, out, _ = cli(capsys, "inspect", run)
    assert code == 0
    assert out.index(str(run / STEP2)) < out.index(str(run / STEP1))  # newest first
    assert out.count("step 2, ZeRO stage 3, world size 2, EMA yes") == 1
    assert out.count("verification: OK") == 2
    manifest = read_manifest(run / STEP2)
    assert all(name in out for name in manifest["files"])
    code, out, _ = cli(capsys, "inspect", run / STEP2, "--json")
    (info,) = json.loads(out)["checkpoints"]
    assert code == 0 and info["ok"] and info["problems"] == []
    assert info["files"] == manifest["files"] and info["step"] == 2
    assert (info["zero_stage"], info["world_size"], info["has_ema"]) == (3, 2, True)
    assert info["model"].endswith(":DiffusionObjective")


def test_consolidated_model_and_ema_weights_are_the_trained_ones(run, tmp_path, capsys):
    code, out, _ = cli(capsys, "consolidate", run / STEP1, "--weights", "model", "-o",
                       tmp_path / "m1.mdlus")  # fmt: skip
    assert code == 0 and "model weights of step 1" in out
    assert cli(capsys, "consolidate", run / STEP1, "-o", tmp_path / "e1.mdlus")[0] == 0
    theta_1 = parameters(Module.from_checkpoint(tmp_path / "m1.mdlus"))
    ema_1 = parameters(DiffusionObjective.from_checkpoint(tmp_path / "e1.mdlus"))
    cfg = load_config(run / "config.yaml")
    theta_0 = parameters(build_objective(cfg, (48, 48)))  # same seed as the trainer
    assert theta_0.keys() == theta_1.keys() == ema_1.keys()
    assert any(not torch.equal(theta_0[k], theta_1[k]) for k in theta_0)  # it trained
    for k in theta_0:  # beta = 1/2: theta_ema = (theta_0 + theta_1) / 2, gathered from shards
        torch.testing.assert_close(ema_1[k], (theta_0[k] + theta_1[k]) / 2, rtol=0, atol=1e-6)


def _outputs(model: MultiDiffusionModel2D) -> torch.Tensor:
    """Deterministic output on the whole 48 x 48 domain (grid patches, fused)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 48, 48, generator=g)
    condition = TensorDict({"condition": torch.randn(2, 6, 48, 48, generator=g)}, batch_size=[2])
    model.set_grid_patching(patch_shape=(16, 16), overlap_pix=4)
    with torch.no_grad():
        return model.eval()(x, torch.tensor([0.5, 3.0]), condition)


def test_submodule_export_reproduces_the_objective_model(run, tmp_path, capsys):
    code, out, _ = cli(capsys, "consolidate", run)  # default: EMA of the newest -> model.mdlus
    assert code == 0 and "ema weights of step 2" in out
    objective = DiffusionObjective.from_checkpoint(run / "model.mdlus")
    code, out, _ = cli(capsys, "consolidate", run / STEP2, "--submodule", "model")
    assert code == 0 and "ema weights of step 2" in out and "submodule 'model'" in out
    net = Module.from_checkpoint(run / f"{STEP2}-model.mdlus")  # the default output name
    assert isinstance(net, MultiDiffusionModel2D)
    assert cli(capsys, "consolidate", run, "--submodule", "model", "-o", tmp_path / "n.pt")[0] == 0
    fresh = build_objective(load_config(run / "config.yaml"), (48, 48)).model
    fresh.load_state_dict(torch.load(tmp_path / "n.pt", weights_only=True))
    reference = _outputs(objective.model)
    assert reference.shape == (2, 4, 48, 48) and reference.abs().sum() > 0
    assert torch.equal(_outputs(net), reference)
    assert torch.equal(_outputs(fresh), reference)


@pytest.fixture()
def corrupt_run(run, tmp_path):
    """A copy of the run whose newest checkpoint has one flipped byte in an EMA shard."""
    copy = shutil.copytree(run, tmp_path / "run")
    shard = copy / STEP2 / "state" / "rank_00001.pt"
    blob = bytearray(shard.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    shard.write_bytes(bytes(blob))
    return copy


def test_inspect_names_the_corrupt_file_and_fails(corrupt_run, capsys):
    code, out, err = cli(capsys, "inspect", corrupt_run)
    assert code == 1
    assert "state/rank_00001.pt fails its sha256 checksum" in out
    assert "verification: FAILED" in out and "verification: OK" in out  # step 1 is intact
    assert str(corrupt_run / STEP2) in err
    code, out, _ = cli(capsys, "inspect", corrupt_run, "--json")
    assert code == 1
    assert [c["ok"] for c in json.loads(out)["checkpoints"]] == [False, True]
    truncated = corrupt_run / STEP1 / "extra" / "rank_00000.pt"
    truncated.write_bytes(truncated.read_bytes()[:-10])
    code, out, _ = cli(capsys, "inspect", corrupt_run / STEP1)
    assert code == 1 and "extra/rank_00000.pt has" in out and "bytes, expected" in out
    (corrupt_run / STEP1 / "manifest.json").write_text('{"format": ')  # torn write
    code, out, _ = cli(capsys, "inspect", corrupt_run / STEP1, "--no-verify")
    assert code == 1 and "manifest.json: no readable manifest" in out


def test_consolidate_skips_a_corrupt_newest_checkpoint_or_refuses_it(corrupt_run, capsys, caplog):
    with caplog.at_level(logging.WARNING, logger="hpcdiff"):
        code, out, _ = cli(capsys, "consolidate", corrupt_run, "-o", corrupt_run / "m.mdlus")
    assert "step_000000002 is corrupt or incomplete" in caplog.text
    assert code == 0 and "weights of step 1" in out
    code, _, err = cli(capsys, "consolidate", corrupt_run / STEP2, "-o", corrupt_run / "x.mdlus")
    assert code == 1 and str(corrupt_run / STEP2) in err and "sha256" in err
    assert not (corrupt_run / "x.mdlus").exists()


def test_bad_paths_and_requests_exit_2(run, tmp_path, capsys):
    code, _, err = cli(capsys, "inspect", tmp_path / "nowhere")
    assert code == 2 and f"{tmp_path / 'nowhere'}: no such file or directory" in err
    code, _, err = cli(capsys, "consolidate", tmp_path)
    assert code == 2 and str(tmp_path) in err and "step_*" in err
    no_ema = shutil.copytree(run / STEP1, tmp_path / "step_000000001")
    manifest = json.loads((no_ema / "manifest.json").read_text())
    (no_ema / "manifest.json").write_text(json.dumps({**manifest, "has_ema": False}))
    code, _, err = cli(capsys, "consolidate", no_ema, "--weights", "ema")
    assert code == 2 and "holds no EMA" in err
    code, _, err = cli(capsys, "consolidate", run / STEP1, "--submodule", "nope", "-o",
                       tmp_path / "y.mdlus")  # fmt: skip
    assert code == 1 and "no submodule 'nope'" in err
