"""Shared set-up for the profiling tests: a tiny dataset + config, and the summarizer module."""

import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `profhelpers`
from profhelpers import PROFILING, STEPS, readme_run, run


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A directory with a 48 x 48 synthetic dataset and a 2-step tiny experiment config."""
    work = tmp_path_factory.mktemp("prof")
    run(["hpcdiff", "data", "synth", "--out", "data", "--shape", "48", "48", "--times", "8",
         "--files", "2"], cwd=work)  # fmt: skip
    data = yaml.safe_load((work / "data" / "data.yaml").read_text())["data"]
    data.update(batch_size=1, patch_shape=[16, 16], patches_per_sample=2)
    cfg = {
        "run": {"name": "tiny", "out_dir": "runs", "steps": STEPS, "log_every": 1},
        "data": data,
        "model": {"name": "SongUNet-S", "args": {"model_channels": 8, "channel_mult": [1],
                                                  "num_blocks": 1, "attn_resolutions": []}},
        "optim": {"lr": 1e-3},
        "zero": {"stage": 1},
        "ema": {"halflife_samples": 10},
        "checkpoint": {"every_steps": STEPS},
        "sample": {"num_steps": 2, "ensemble": 1, "overlap_pix": 4},
    }  # fmt: skip
    (work / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    return work


@pytest.fixture(scope="session")
def trained(tiny_run):
    """``runs/tiny`` trained on 2 ranks under the recorder (README command); its stdout."""
    return readme_run("rec_train", cwd=tiny_run).stdout


@pytest.fixture(scope="session")
def summarize():
    """profiling/summarize.py as a module."""
    sys.path.insert(0, str(PROFILING))
    try:
        import summarize as module
    finally:
        sys.path.remove(str(PROFILING))
    return module
