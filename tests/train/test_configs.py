"""Every shipped experiment config under configs/ loads, validates and (the small ones) builds.

Validation needs no data; the dry-runs run the real ``train(cfg, dry_run=True)`` in this
process on a 48 x 48 dataset written by ``hpcdiff data synth``, with the configs' data paths
overridden.
"""

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest

from hpcdiff.config import ConfigError, from_dict, read_yaml, to_dict
from hpcdiff.distributed import estimate_zero_memory
from hpcdiff.experiment.config import TrainConfig, load_config
from hpcdiff.models import count_parameters

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
LARGE = {"kmscale_gpu.yaml"}  # GPU-sized: validated and built on the meta device only
SMALL = [c for c in CONFIGS if c.name not in LARGE]
ISSUE_CONFIGS = {
    "quickstart.yaml", "kmscale_gpu.yaml",
    *(f"{m}_zero{s}.yaml" for m in ("unet", "dit") for s in (1, 2, 3)),
}  # fmt: skip
_ids = [c.name for c in CONFIGS]


def test_the_issue_configs_are_shipped_and_listed_in_the_readme():
    names = {c.name for c in CONFIGS}
    assert ISSUE_CONFIGS <= names
    readme = (ROOT / "configs" / "README.md").read_text()
    assert all(f"`{name}`" in readme for name in names)


def _plain(value):
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


@pytest.mark.parametrize("path", CONFIGS, ids=_ids)
def test_config_validates_and_keeps_every_value(path):
    raw = read_yaml(path)
    resolved = to_dict(load_config(path))
    for section, body in raw.items():
        for key, value in body.items():
            assert _plain(resolved[section][key]) == _plain(value), f"{section}.{key}"
    match = re.fullmatch(r"(unet|dit)_zero(\d)\.yaml", path.name)
    if match:
        family = {"unet": "SongUNet", "dit": "DiT"}[match[1]]
        assert resolved["model"]["name"].startswith(family)
        assert resolved["zero"]["stage"] == int(match[2])
        assert resolved["run"]["name"] == path.stem


@pytest.mark.parametrize("path", CONFIGS, ids=_ids)
def test_a_typo_in_any_key_is_rejected(path):
    """What makes the test above fail on a misspelled key: every typed key is checked."""
    raw = read_yaml(path)
    with pytest.raises(ConfigError, match="'optimm' is unknown"):
        from_dict(TrainConfig, {**raw, "optimm": raw.get("optim", {})})
    for section, body in raw.items():
        for key in body:
            bad = copy.deepcopy(raw)
            bad[section][f"{key}x"] = bad[section].pop(key)
            with pytest.raises(ConfigError, match=rf"'{section}\.{key}x' is unknown"):
                from_dict(TrainConfig, bad)


def backbone_parameters(cfg: TrainConfig, patch_shape) -> int:
    """Parameters of the config's backbone, built on the meta device (no memory)."""
    data, model = cfg.data, cfg.model
    c_pe = model.channels_positional_embedding if model.positional_embedding else 0
    if model.positional_embedding == "linear":  # (y, x) coordinates
        c_pe = 2
    in_channels = len(data.variables) + len(data.condition_variables)
    in_channels += len(data.static_variables) + c_pe
    return count_parameters(
        model.name, resolution=list(patch_shape), in_channels=in_channels,
        out_channels=len(data.variables), **model.args,
    )  # fmt: skip


@pytest.mark.parametrize("path", CONFIGS, ids=_ids)
def test_model_args_are_constructor_arguments(path):
    """``model.args`` is a free mapping: building the backbone checks it."""
    cfg = load_config(path)
    n = backbone_parameters(cfg, cfg.data.patch_shape)
    stated = re.search(r"\(([\d.]+) M parameters\)", path.read_text().splitlines()[0])
    if stated:  # the header's parameter count is still right
        assert f"{n / 1e6:.3g}" == f"{float(stated[1]):.3g}"


def test_kmscale_comments_state_the_current_estimates():
    path = ROOT / "configs" / "kmscale_gpu.yaml"
    cfg, text = load_config(path), path.read_text()
    assert (cfg.zero.stage, cfg.zero.precision) == (3, "bf16")
    assert min(cfg.data.patch_shape) >= 256
    n = backbone_parameters(cfg, cfg.data.patch_shape)
    assert n == count_parameters("DiT-B/4", resolution=256, in_channels=14, out_channels=4)
    assert f"trainable_parameters {n}" in text
    one = estimate_zero_memory(n, 3, 1, "bf16").total / 2**20
    assert f"zero_memory_per_rank_mib {one:.1f}" in text
    for ranks in (8, 32, 128):
        zero3 = estimate_zero_memory(n, 3, ranks, "bf16").total / 2**20
        zero0 = estimate_zero_memory(n, 0, ranks, "bf16").total / 2**20
        cells = (str(ranks), f"{zero3:.1f} MiB", f"{zero0:.1f} MiB")
        row = r"\s+".join(re.escape(cell) for cell in cells)
        assert re.search(rf"\n#\s+{row}\n", text), ranks


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory):
    """Paths of a 48 x 48, 8-time synthetic dataset as ``data.*`` overrides."""
    out = tmp_path_factory.mktemp("configs") / "data"
    subprocess.run(
        [Path(sys.executable).parent / "hpcdiff", "data", "synth", "--out", str(out),
         "--shape", "48", "48", "--times", "8", "--files", "2"],
        check=True, capture_output=True,
    )  # fmt: skip
    data = read_yaml(out / "data.yaml")["data"]
    assert data["files"][0].startswith(str(out))
    keys = ("files", "condition_files", "static_files", "stats_file", "train_time", "valid_time")
    return [f"data.{k}={json.dumps(data[k])}" for k in keys]


@pytest.mark.parametrize("path", SMALL, ids=[c.name for c in SMALL])
def test_dry_run_builds_the_model(path, synth_data, tmp_path, capsys):
    from hpcdiff.train.loop import train

    # 16 x 16 patches for speed; the sampling overlap must stay below the patch side
    overrides = [*synth_data, "data.patch_shape=[16, 16]", "sample.overlap_pix=4"]
    overrides.append(f"run.out_dir={tmp_path}")
    if "domain" in read_yaml(path):  # one process: one rank per sample
        with pytest.raises(ConfigError, match="'domain.grid'.*does not divide the world size 1"):
            with mock.patch.dict(os.environ):
                train(load_config(path, overrides), dry_run=True)
        overrides.append("domain.grid=[1, 1]")
    cfg = load_config(path, overrides)
    with mock.patch.dict(os.environ):  # init_distributed exports RANK, MASTER_PORT, ...
        run_dir = train(cfg, dry_run=True)
    out = capsys.readouterr().out
    summary = json.loads(out[out.rindex("{") :])
    assert summary["zero_stage"] == cfg.zero.stage and summary["world_size"] == 1
    # The trainer adds no parameters to the backbone (preconditioner, patch wrapper).
    n = summary["trainable_parameters"]
    assert n == backbone_parameters(cfg, (16, 16))
    mem = estimate_zero_memory(n, cfg.zero.stage, 1, cfg.zero.precision)
    assert summary["zero_memory_per_rank_mib"] == round(mem.total / 2**20, 2)
    assert not run_dir.exists()  # a dry run prints the resolved config and writes nothing
    assert f"stage: {cfg.zero.stage}" in out


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["objective.kind=regression", "objective.regression_run=runs/r"],
         "'objective.regression_run' needs objective.kind diffusion"),
        (["objective.regression_run=runs/r", "domain.grid=[1, 2]"],
         "residual diffusion trains on whole grids"),
        (["objective.regression_run=runs/r", "data.mode=patch"], "data.mode 'patch'"),
        (["objective.kind=gan"], "objective.kind"),
        (["objective.mean_cache_mib=-1"], "'objective.mean_cache_mib' must be >= 0"),
    ],
)  # fmt: skip
def test_objective_section_is_checked_before_any_work(overrides, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        load_config(ROOT / "configs" / "quickstart.yaml", overrides)
