"""Tiled (domain-decomposed) training: geometry, patches at global positions, and a real 2-rank
run under torchrun where each rank's NetCDF reads are recorded and checked against its window."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from hpcdiff.config import ConfigError
from hpcdiff.config.checks import check_domain_grid
from hpcdiff.core import Module
from hpcdiff.data.tiles import Tile
from hpcdiff.diffusion.multi_diffusion import MultiDiffusionModel2D
from hpcdiff.experiment import build
from hpcdiff.experiment.tiling import (
    draw_corners,
    gather_patches,
    training_window,
)

BIN = Path(sys.executable).parent
HERE = Path(__file__).resolve().parent


@pytest.mark.parametrize(
    "grid, patch, domain, align",
    [((100, 60), (16, 16), (2, 1), (1, 1)), ((37, 53), (8, 5), (3, 4), (1, 1)),
     ((128, 96), (32, 16), (2, 3), (32, 32)), ((20, 20), (20, 4), (1, 2), (1, 1))],
)  # fmt: skip
def test_windows_split_the_patch_positions_exactly_once(grid, patch, domain, align):
    (H, W), (Hp, Wp) = grid, patch
    owner = torch.zeros(H - Hp + 1, W - Wp + 1, dtype=torch.long)
    for r in range(domain[0] * domain[1]):
        win = training_window(grid, patch, domain, r, align)
        assert win.within(grid)
        # the window is this rank's corner tile grown by the patch size minus one
        owner[win.row0 : win.row1 - Hp + 1, win.col0 : win.col1 - Wp + 1] += 1
        rows_bound = -(-(H - Hp + 1) // domain[0]) + Hp - 1 + align[0]
        assert win.shape[0] <= rows_bound
    assert (owner == 1).all()  # every global patch position belongs to exactly one rank


def test_bad_domain_grid_and_patch_name_the_key():
    with pytest.raises(ConfigError, match=r"'domain.grid'.*divide the world size 6"):
        check_domain_grid((2, 2), 6, key="domain.grid")
    assert check_domain_grid((1, 2), 6, key="domain.grid") == 2
    with pytest.raises(ConfigError, match=r"'domain.grid'.*\[3, 33\] positions"):
        training_window((48, 48), (46, 16), (4, 1), 0)
    with pytest.raises(ConfigError, match=r"'data.patch_shape': \[64, 16\] is larger"):
        training_window((48, 48), (64, 16), (1, 1), 0)


def test_gather_patches_is_slicing_and_corners_cover_the_window():
    x = torch.randn(3, 2, 11, 9)
    corners = draw_corners((11, 9), (4, 3), patches=5, batch=3)
    patches = gather_patches(x, corners, (4, 3))
    for p in range(5):
        for b in range(3):
            r, c = corners[p, b].tolist()
            torch.testing.assert_close(patches[p * 3 + b], x[b, :, r : r + 4, c : c + 3])
    many = draw_corners((11, 9), (4, 3), patches=2000, batch=1, generator=torch.Generator())
    assert many[..., 0].min() == 0 and many[..., 0].max() == 7
    assert many[..., 1].min() == 0 and many[..., 1].max() == 6


class Probe(Module):
    """Backbone that records the conditioning it is given (x and condition channels summed)."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.seen = []

    def forward(self, x, t, condition=None):
        self.seen.append(condition)
        return self.scale * (x + condition["condition"].sum(1, keepdim=True))


def test_a_model_file_written_before_the_experiment_move_loads(tmp_path):
    """Files saved before build.py moved to hpcdiff/experiment/ name the class
    hpcdiff.train.build:DiffusionObjective; they load as the same objective."""
    md = MultiDiffusionModel2D(Probe(), (12, 10), positional_embedding="sinusoidal",
                               condition_patch=True)  # fmt: skip
    with torch.no_grad():
        md.model.scale.fill_(2.5)
    saved = build.DiffusionObjective(md, "edm", {}, (6, 5))
    path = saved.save(tmp_path / "old.mdlus")
    with zipfile.ZipFile(path) as zf:
        files = {name: zf.read(name) for name in zf.namelist()}
    spec = json.loads(files["args.json"])
    assert spec["class"] == "hpcdiff.experiment.build:DiffusionObjective"
    spec["class"] = "hpcdiff.train.build:DiffusionObjective"
    files["args.json"] = json.dumps(spec).encode()
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    loaded = Module.from_checkpoint(path)
    assert type(loaded) is build.DiffusionObjective and loaded.patch_shape == (6, 5)
    torch.testing.assert_close(loaded.state_dict(), saved.state_dict())
    assert loaded.model.model.scale.item() == 2.5


@pytest.mark.parametrize("pe", ["sinusoidal", "learnable"])
def test_window_patches_see_their_global_positional_embedding_and_condition(pe, monkeypatch):
    """A window at origin (r, c) with local corners k gives the loss of the full grid at
    global corners k + (r, c): same patches, same condition, same positional embedding."""
    H, W, patch = 24, 20, (6, 5)
    md = MultiDiffusionModel2D(Probe(), (H, W), positional_embedding=pe, condition_patch=True)
    objective = build.DiffusionObjective(md, "edm", {}, patch, patches_per_sample=3)
    x, cond = torch.randn(2, 1, H, W), torch.randn(2, 2, H, W)
    weight = torch.rand(2, 1, H, W)
    local = draw_corners((13, 11), patch, 3, 2)
    origin = torch.tensor([[9, 7], [9, 7]])
    win = Tile.at((9, 7), (13, 11))
    rows, cols = win.slices()

    def run(args, corners):
        monkeypatch.setattr(build, "draw_corners", lambda *a, **k: corners)
        torch.manual_seed(3)
        return objective(*args), md.model.seen[-1]

    tiled, seen = run((x[..., rows, cols], weight[..., rows, cols], cond[..., rows, cols],
                       origin), local)  # fmt: skip
    full, _ = run((x, weight, cond), local + origin[None])
    torch.testing.assert_close(tiled, full)
    # positional embedding of patch p of sample b is the global embedding at its corner
    pe_seen = seen["positional_embedding"]
    for p in range(3):
        for b in range(2):
            r, c = (local[p, b] + origin[b]).tolist()
            want = md.pos_embd[:, r : r + patch[0], c : c + patch[1]]
            torch.testing.assert_close(pe_seen[p * 2 + b], want)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    work = tmp_path_factory.mktemp("tiled")
    subprocess.run(
        [BIN / "hpcdiff", "data", "synth", "--out", "data", "--shape", "48", "64",
         "--times", "12", "--files", "2", "--chunk", "16"],
        cwd=work, check=True, capture_output=True,
    )  # fmt: skip
    data = yaml.safe_load((work / "data" / "data.yaml").read_text())["data"]
    data.update(batch_size=2, patch_shape=[16, 16], patches_per_sample=4)
    cfg = {
        "run": {"name": "tiled", "out_dir": "runs", "steps": 40, "log_every": 1,
                "val_every": 4, "val_batches": 2},
        "data": data,
        "model": {"name": "SongUNet-S", "args": {"model_channels": 8, "channel_mult": [1],
                                                  "num_blocks": 1, "attn_resolutions": []}},
        "optim": {"lr": 3e-3, "warmup_steps": 0},
        "zero": {"stage": 2},
        "domain": {"grid": [1, 2]},
        "ema": {"enabled": False},
        "checkpoint": {"every_steps": 1000},
    }  # fmt: skip
    (work / "tiled.yaml").write_text(yaml.safe_dump(cfg))
    return work


def test_two_ranks_read_only_their_tile_and_the_loss_decreases(dataset):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [BIN / "torchrun", "--standalone", "--nproc-per-node", "2",
           HERE / "tiledworker.py", "tiled.yaml", str(dataset)]  # fmt: skip
    out = subprocess.run(cmd, cwd=dataset, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    records = [json.loads((dataset / f"reads_rank{r}.json").read_text()) for r in (0, 1)]
    windows = []
    for rank, rec in enumerate(records):
        win = Tile(*rec["window"])
        assert win == training_window((48, 64), (16, 16), (1, 2), rank, win_align(dataset))
        assert win.shape[1] < 64  # a part of the grid, not the whole
        fine = [r for r in rec["reads"] if r["group"] in ("target", "static")]
        assert {r["variable"] for r in fine} >= {"t2m", "tp", "orography"}
        for r in fine:  # every read of the fine grid lies inside this rank's window
            assert win.contains(Tile(r["rows"][0], r["rows"][1], r["cols"][0], r["cols"][1]))
        windows.append(win)
    assert windows[0] != windows[1]
    run = dataset / "runs" / "tiled"
    for rank in (0, 1):  # per-rank log files
        assert f"[rank {rank}]" in (run / "logs" / f"rank{rank:05d}.log").read_text()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    assert len([r for r in rows if "loss" in r]) == 40
    # validation with fixed noise on the same validation windows: the model learns
    val = [r["val_loss"] for r in rows if "val_loss" in r]
    assert len(val) == 10 and val[-1] < 0.95 * val[0], val
    assert sum(b < a for a, b in zip(val, val[1:])) >= 8, val  # (1.57 -> 1.40 when written)


def win_align(work: Path) -> tuple[int, int]:
    import netCDF4

    path = sorted((work / "data").glob("fine_*.nc"))[0]
    with netCDF4.Dataset(path) as nc:
        return tuple(nc["t2m"].chunking()[-2:])


def test_patch_mode_trains_on_chunk_aligned_windows(dataset):
    """data.mode=patch: every step reads random 32 x 32 windows (not the grid) per sample."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out_dir = dataset / "patchmode"
    out_dir.mkdir()
    cmd = [BIN / "torchrun", "--standalone", "--nproc-per-node", "1",
           HERE / "tiledworker.py", "tiled.yaml", str(out_dir), "run.name=patchmode",
           "run.steps=3", "run.val_every=0", "domain.grid=[1, 1]", "data.mode=patch",
           "data.window=[32, 32]"]  # fmt: skip
    out = subprocess.run(cmd, cwd=dataset, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    rec = json.loads((out_dir / "reads_rank0.json").read_text())
    fine = [r for r in rec["reads"] if r["group"] == "target"]
    shapes = {(r["rows"][1] - r["rows"][0], r["cols"][1] - r["cols"][0]) for r in fine}
    assert shapes == {(32, 32)}
    assert len({(r["rows"][0], r["cols"][0]) for r in fine}) > 1  # windows move
    rows = [json.loads(line) for line in (dataset / "runs" / "patchmode" / "metrics.jsonl").open()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 3 and all(0 < v < 10 for v in losses)


def _train(work: Path, ranks: int, *overrides: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [BIN / "torchrun", "--standalone", "--nproc-per-node", str(ranks), "-m", "hpcdiff",
           "train", "--config", "tiled.yaml", "run.val_every=0", "checkpoint.every_steps=3",
           "run.steps=6", *overrides]  # fmt: skip
    out = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]


def _resumed_copy(work: Path, src: str, dst: str) -> Path:
    """A copy of run ``src`` as it was after step 3 (the newer checkpoint removed)."""
    copy = shutil.copytree(work / "runs" / src, work / "runs" / dst)
    shutil.rmtree(copy / "checkpoints" / "step_000000006")
    return copy


def _step_losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


@pytest.mark.multiprocess
def test_tiled_training_resumes_on_another_stage_and_rank_count(dataset):
    """2 ranks, domain.grid [1, 2], ZeRO-2 -> the same ranks at ZeRO-3 (same noise: the losses
    continue up to summation order), and -> 1 rank without tiling at ZeRO-1 (resharded)."""
    _train(dataset, 2, "run.name=tiled_ref")
    ref = _step_losses(dataset / "runs" / "tiled_ref")
    zero3 = _resumed_copy(dataset, "tiled_ref", "tiled_zero3")
    _train(dataset, 2, "run.name=tiled_zero3", "zero.stage=3")
    assert _step_losses(zero3) == pytest.approx(ref, rel=1e-4)  # steps 1-3 kept, 4-6 rerun
    one = _resumed_copy(dataset, "tiled_ref", "tiled_one")
    _train(dataset, 1, "run.name=tiled_one", "zero.stage=1", "domain.grid=[1, 1]")
    log = (one / "logs" / "rank00000.log").read_text()
    assert "written by 2 ranks at ZeRO-2, loaded on 1 at ZeRO-1" in log
    losses = _step_losses(one)
    assert sorted(losses) == [1, 2, 3, 4, 5, 6]
    assert all(0 < losses[s] < 2 * ref[s] for s in (4, 5, 6))  # other noise, same model
