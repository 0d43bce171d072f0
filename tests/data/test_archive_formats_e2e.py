"""NetCDF3 64-bit offset files and WRF output (staggered U, ``Times``, ``XLAT``/``XLONG``, a d01
parent as the condition of its d02 nest), used as written: a 2-rank tiled training run whose
every read lies in its rank's window, then a 2-rank tiled sampling whose samples.nc xarray
reads with the truth, 2-D coordinates and projection of the inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import netCDF4
import numpy as np
import pytest
import xarray as xr
import yaml

from hpcdiff.data.reader import HANDLES, GridSource
from hpcdiff.data.tiles import Tile
from hpcdiff.evaluate.run import evaluate_run

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]
WORKER = ROOT / "tests" / "train" / "tiledworker.py"


def _run(cmd: list, cwd: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]


@pytest.fixture(scope="module", params=["netcdf3", "wrf"])
def trained(request, tmp_path_factory) -> Path:
    """A 2-step 2-rank run (domain.grid [1, 2]) on a 32 x 48 dataset of the given format."""
    work = tmp_path_factory.mktemp(request.param)
    _run([BIN / "hpcdiff", "data", "synth", "--out", "data", "--format", request.param,
          "--shape", "32", "48", "--times", "6", "--files", "3", "--coarse-factor", "4",
          "--variables", "t2m", "u10", "tp"], work)  # fmt: skip
    data = yaml.safe_load((work / "data" / "data.yaml").read_text())["data"]
    data.update(batch_size=1, patch_shape=[16, 16], patches_per_sample=2)
    cfg = {
        "run": {"name": "r", "out_dir": "runs", "steps": 2, "log_every": 1},
        "data": data,
        "model": {"name": "SongUNet-S", "args": {"model_channels": 8, "channel_mult": [1],
                                                  "num_blocks": 1, "attn_resolutions": []}},
        "domain": {"grid": [1, 2]},
        "ema": {"enabled": False},
        "checkpoint": {"every_steps": 2},
        "sample": {"num_steps": 2, "ensemble": 2, "times": 1, "overlap_pix": 4,
                   "boundary_pix": 1},
    }  # fmt: skip
    (work / "run.yaml").write_text(yaml.safe_dump(cfg))
    _run([BIN / "torchrun", "--standalone", "--nproc-per-node", "2", WORKER, "run.yaml", "."],
         work)  # fmt: skip
    return work


@pytest.mark.multiprocess
def test_two_rank_tiled_training_reads_only_each_window(trained):
    data = yaml.safe_load((trained / "data" / "data.yaml").read_text())["data"]
    windows = []
    for rank in (0, 1):
        rec = json.loads((trained / f"reads_rank{rank}.json").read_text())
        win = Tile(*rec["window"])
        assert win.shape[1] < 48  # a part of the grid
        fine = [r for r in rec["reads"] if r["group"] in ("target", "static")]
        assert {r["variable"] for r in fine} == set(data["variables"] + data["static_variables"])
        for r in fine:  # staggered U reads one more column than the window it fills
            extra = 1 if r["variable"] == "U" else 0
            assert win.contains(Tile(r["rows"][0], r["rows"][1], r["cols"][0],
                                     r["cols"][1] - extra))  # fmt: skip
        assert any(r["group"] == "condition" for r in rec["reads"])
        windows.append(win)
    assert windows[0] != windows[1]
    rows = [json.loads(line) for line in (trained / "runs" / "r" / "metrics.jsonl").open()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 2 and all(np.isfinite(losses))


@pytest.mark.multiprocess
def test_two_rank_tiled_sampling_writes_the_inputs_grid(trained):
    _run([BIN / "torchrun", "--standalone", "--nproc-per-node", "2", "-m", "hpcdiff", "sample",
          "runs/r", "sample.domain_grid=[1,2]"], trained)  # fmt: skip
    data = yaml.safe_load((trained / "data" / "data.yaml").read_text())["data"]
    files = sorted(str(p) for p in (trained / "data").glob(Path(data["files"][0]).name))
    wrf = "levels" in data
    with xr.open_dataset(trained / "runs" / "r" / "samples" / "samples.nc") as out:
        source = GridSource(files, data["variables"], levels=data.get("levels"))
        seconds = (out[data["variables"][0]].coords[("Time" if wrf else "time")].values
                   - np.datetime64("1970-01-01")) / np.timedelta64(1, "s")  # fmt: skip
        t = int(np.flatnonzero(np.abs(source.times - seconds[0]) < 0.5)[0])
        for name in data["variables"]:  # truth = the input (de-staggered U), via normalization
            want = source.read(name, t)
            np.testing.assert_allclose(out[f"{name}_truth"].values[0], want, rtol=1e-5,
                                       atol=1e-6 * float(np.abs(want).max()))  # fmt: skip
            assert out[name].shape == (2, 1, 32, 48)
        with netCDF4.Dataset(files[0]) as src:
            if wrf:
                assert set(out["U"].coords) >= {"XLAT", "XLONG"}
                np.testing.assert_array_equal(out["XLAT"].values, src["XLAT"][0])
                np.testing.assert_array_equal(out["XLONG"].values, src["XLONG"][0])
                for key in ("MAP_PROJ", "TRUELAT1", "TRUELAT2", "STAND_LON", "DX"):
                    assert out.attrs[key] == src.getncattr(key), key
                assert out["XLAT"].attrs["standard_name"] == "latitude"
            else:
                np.testing.assert_array_equal(out["lat"].values, src["lat"][:])
                np.testing.assert_array_equal(out["lon"].values, src["lon"][:])
    pngs = sorted((trained / "runs" / "r" / "samples").glob("*.png"))
    assert len(pngs) == len(data["variables"])
    # evaluation against the input files themselves (not the truth copy in samples.nc)
    result = evaluate_run(trained / "runs" / "r", truth=files, out_dir=trained / "eval")
    assert result["truth"] == ", ".join(files)
    # evaluated from another directory: the run's relative condition files are not found
    # there, so the interpolation baselines are left out with a note instead of failing
    assert result["condition"].startswith("no interpolation baseline (config key ")
    for name in data["variables"]:
        assert (trained / "eval" / f"maps_{name}.png").stat().st_size > 1000
        assert np.isfinite(result["scores"][name]["crps"])
    HANDLES.close_all()
