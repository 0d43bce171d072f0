"""Domain-decomposed multi-diffusion sampling: torchrun launches with 1, 2 and 4 CPU ranks and an
MPICH mpiexec launch with 2 (gloo) must reproduce single-process ``MultiDiffusionPredictor`` +
``sample()`` on the full grid, with the same initial noise, for any tile grid (including data
groups x domain groups)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import netCDF4
import numpy as np
import pytest
import torch
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "distributed"))

import dsworker  # noqa: E402
from distlaunch import ROOT, run, worker_env  # noqa: E402

from hpcdiff.data.tiles import Tile, split_domain  # noqa: E402
from hpcdiff.distributed.domain import DomainMesh, intersect  # noqa: E402
from hpcdiff.generate.distributed import (  # noqa: E402
    TiledMultiDiffusionPredictor,
    _axis_plan,
    block_noise,
    sample_tiled,
)

# Rectangular 37 x 29 grid: no tile grid divides it; strides (7, 5), (14, 14), (5, 7).
GEOMETRIES = {
    "a": dict(patch=[12, 10], overlap=3, boundary=2, window="uniform", solver="heun"),
    "b": dict(patch=[16, 16], overlap=2, boundary=0, window="cosine", solver="euler", chunk=3),
    "c": dict(patch=[10, 12], overlap=4, boundary=1, window="cosine", solver="heun", chunk=5),
}
RANGES = {"sample", "sample.step", "sample.denoise", "patch.extract", "model.forward",
          "patch.fuse"}  # fmt: skip
HALO = {"comm.halo"}
CHURN = {"S_churn": 20.0, "num_steps": dsworker.STEPS}
GEOMETRIES["s"] = dict(GEOMETRIES["a"], boundary=1, solver="edm_stochastic_heun", options=CHURN)
GEOMETRIES["x"] = dict(GEOMETRIES["b"], solver="edm_stochastic_exponential_euler", options=CHURN)
LAUNCHES = {  # ranks -> (geometry, tile grid); 4 ranks with a 1x2 grid are 2 data groups
    1: [("a", [1, 1]), ("b", [1, 1]), ("c", [1, 1])],
    2: [("a", [1, 2]), ("b", [2, 1]), ("c", [1, 2]), ("s", [2, 1])],
    4: [("a", [2, 2]), ("b", [1, 4]), ("c", [1, 2]), ("s", [2, 2]), ("x", [1, 4])],
}


def _cases(world: int) -> list[dict]:
    return [{**GEOMETRIES[g], "name": f"{g}{grid[0]}x{grid[1]}", "grid": grid}
            for g, grid in LAUNCHES[world]]  # fmt: skip


@pytest.fixture(scope="module")
def references() -> dict:
    return {(g, group): dsworker.reference(case, group)
            for g, case in GEOMETRIES.items() for group in (0, 1)}  # fmt: skip


@pytest.fixture(
    scope="module",
    params=[("torchrun", 1), ("torchrun", 2), ("torchrun", 4), ("mpiexec", 2)],
    ids=lambda p: f"{p[0]}-{p[1]}",
)
def launch(request, tmp_path_factory) -> tuple[int, Path]:
    launcher, world = request.param
    out = tmp_path_factory.mktemp(f"{launcher}{world}")
    env = worker_env(HPCDIFF_SCRIPT=str(HERE / "dsworker.py"))
    if launcher == "torchrun":
        env["NPROC_PER_NODE"] = str(world)
    else:  # the `mpich` wheel's hydra launcher
        env.update(NP=str(world), MPIRUN=str(Path(sys.executable).parent / "mpiexec"))
    script = ROOT / "launchers" / ("torchrun.sh" if launcher == "torchrun" else "mpirun.sh")
    run([str(script), "--out", str(out), "--cases", json.dumps(_cases(world))], env)
    return world, out


@pytest.mark.multiprocess
def test_tiles_equal_single_process_sampling(launch, references):
    world, out = launch
    for case in _cases(world):
        grid = case["grid"]
        groups = world // (grid[0] * grid[1])
        for group in range(groups):
            xN_ref, x0_ref = references[(case["name"][0], group)]
            covered, seen = torch.zeros(dsworker.SHAPE, dtype=torch.int32), set()
            for r in range(group * grid[0] * grid[1], (group + 1) * grid[0] * grid[1]):
                saved = torch.load(out / f"{case['name']}_r{r}.pt", weights_only=True)
                assert saved["group"] == group
                names = set(saved["ranges"])  # a rank without patches runs no model
                assert {"sample", "sample.step", "sample.denoise"} <= names <= RANGES | HALO
                assert ("comm.halo" in names) == (grid != [1, 1])
                seen |= names
                rows, cols = slice(*saved["tile"][:2]), slice(*saved["tile"][2:])
                covered[rows, cols] += 1
                assert torch.equal(saved["xN"], xN_ref[..., rows, cols])  # same noise
                err = (saved["x0"] - x0_ref[..., rows, cols]).abs().max()
                assert err <= 1e-5 * x0_ref.abs().max(), (case["name"], r, float(err))
            assert bool((covered == 1).all()), case["name"]
            assert RANGES <= seen


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A 2-step run of `hpcdiff train` on a 40 x 44 synthetic dataset (one process)."""
    work = tmp_path_factory.mktemp("run")
    hpcdiff = Path(sys.executable).parent / "hpcdiff"
    synth = ["data", "synth", "--out", "data", "--shape", "40", "44", "--times", "8",
             "--files", "2", "--coarse-factor", "4", "--variables", "t2m", "tp"]  # fmt: skip
    subprocess.run([hpcdiff, *synth], cwd=work, check=True, capture_output=True)
    data = yaml.safe_load((work / "data" / "data.yaml").read_text())["data"]
    data.update(batch_size=1, patch_shape=[16, 16], patches_per_sample=2)
    cfg = {
        "run": {"name": "tiny", "out_dir": "runs", "steps": 2, "log_every": 1},
        "data": data,
        "model": {"name": "SongUNet-S", "args": {"model_channels": 8, "channel_mult": [1],
                                                  "num_blocks": 1, "attn_resolutions": []}},
        "checkpoint": {"every_steps": 2},
        "sample": {"num_steps": 3, "ensemble": 2, "overlap_pix": 4, "boundary_pix": 1},
    }  # fmt: skip
    (work / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    subprocess.run([hpcdiff, "train", "--config", "tiny.yaml"], cwd=work, check=True,
                   capture_output=True)  # fmt: skip
    return work / "runs" / "tiny"


def _sample(run: Path, ranks: int, *overrides: str) -> dict[str, np.ndarray]:
    env = worker_env(HPCDIFF_SCRIPT=str(HERE / "dsworker.py"), NPROC_PER_NODE=str(ranks))
    cmd = [str(ROOT / "launchers" / "torchrun.sh"), "--generate", str(run), *overrides]
    proc = subprocess.run(cmd, cwd=run.parents[1], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    with netCDF4.Dataset(run / "samples" / "samples.nc") as nc:
        assert nc.Conventions == "CF-1.8" and nc["time"].units.startswith("seconds since")
        return {v: np.asarray(nc[v][:]) for v in nc.variables if nc[v].ndim >= 3}


@pytest.mark.multiprocess
def test_hpcdiff_sample_on_tiles_matches_data_parallel_sampling(trained_run):
    tiled = _sample(trained_run, 2, "sample.domain_grid=[1,2]")  # one sample over 2 tiles
    whole = _sample(trained_run, 2)  # 2 data groups of one rank: whole samples per rank
    assert sorted(tiled) == sorted(whole) and tiled
    for name, value in whole.items():
        assert np.isfinite(value).all() or name.endswith("_truth")
        scale = np.nanmax(np.abs(value))
        np.testing.assert_allclose(tiled[name], value, rtol=0, atol=1e-5 * scale, err_msg=name)
    member = next(v for k, v in whole.items() if not k.endswith("_truth"))
    assert not np.allclose(member[0], member[1])  # members differ


def test_stochastic_solvers_inject_noise(references):
    _, deterministic = dsworker.reference({**GEOMETRIES["s"], "solver": "heun", "options": {}})
    _, churned = references[("s", 0)]
    assert (churned - deterministic).abs().max() > 1e-2 * deterministic.abs().max()


def test_block_noise_does_not_depend_on_the_tiling():
    full = block_noise([5, 9], 3, Tile.full((70, 45)), block=16)
    for grid in ((2, 3), (3, 1)):
        for tile in split_domain((70, 45), grid):
            part = block_noise([5, 9], 3, tile, block=16)
            assert torch.equal(part, full[..., tile.row0 : tile.row1, tile.col0 : tile.col1])
    assert not torch.equal(full[0], full[1])  # seeds differ, so do members
    other_draw = block_noise([5, 9], 3, Tile.full((70, 45)), block=16, stream=1)
    assert not torch.equal(other_draw, full)
    assert abs(float(full.std()) - 1) < 0.05


@pytest.mark.parametrize(
    "L, size, overlap, b, parts",
    [(37, 12, 3, 2, 4), (29, 16, 2, 0, 4), (29, 12, 4, 1, 3), (8, 8, 0, 0, 2)],
)
def test_every_patch_is_owned_by_exactly_one_tile(L, size, overlap, b, parts):
    stride = size - overlap - b
    bounds = [i * L // parts for i in range(parts + 1)]
    plans = [_axis_plan(lo, hi, L, size, stride, b) for lo, hi in zip(bounds, bounds[1:])]
    owned = sorted(i for p in plans if p is not None for i in range(p.i0, p.i1))
    assert owned == list(range(math.ceil(L / stride)))
    for p in plans:
        if p is not None:  # the window's indices stay inside the gathered region
            assert int(p.index.min()) == 0 and int(p.index.max()) == p.need[1] - p.need[0] - 1


def test_domain_mesh_layout_and_errors():
    mesh = DomainMesh((2, 2), (37, 29), rank=6, world=8)
    assert (mesh.data_group, mesh.domain_rank, mesh.data_groups) == (1, 2, 2)
    assert mesh.tile == Tile(18, 37, 0, 14) and mesh.global_rank(3) == 7
    assert mesh.neighbours(1) == [0, 1, 3] and mesh.neighbours(0) == []
    assert intersect(Tile(0, 2, 0, 2), Tile(2, 4, 0, 2)) is None
    with pytest.raises(ValueError, match="not a multiple"):
        DomainMesh((2, 2), (37, 29), rank=0, world=6)
    with pytest.raises(ValueError, match="positive"):
        DomainMesh((0, 2), (37, 29))


def test_tiled_predictor_rejects_bad_input():
    pred = dsworker.predictor(GEOMETRIES["a"])
    with pytest.raises(ValueError, match="mesh.shape"):
        TiledMultiDiffusionPredictor(pred, DomainMesh.single((36, 29)))
    tiled = TiledMultiDiffusionPredictor(pred, DomainMesh.single(dsworker.SHAPE))
    with pytest.raises(ValueError, match="must cover tile"):
        tiled(torch.zeros(1, 2, 36, 29), torch.ones(1))
    with pytest.raises(ValueError, match="Unknown solver"):
        sample_tiled(pred, DomainMesh.single(dsworker.SHAPE), None, [0], 2, 2, solver="rk9")
