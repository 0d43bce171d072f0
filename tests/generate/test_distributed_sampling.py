"""Domain-decomposed multi-diffusion sampling: torchrun and MPICH mpiexec launches with 1, 2 and 4
CPU ranks (gloo) must reproduce single-process ``MultiDiffusionPredictor`` (or DPS-guided)
``sample()`` on the full grid, with the same initial noise, for any tile grid (including data
groups x domain groups), Euler and Heun, uniform and cosine windows, on a 37 x 29 grid that no
tile grid divides; stochastic samplers must not depend on the tiling; each launch writes one
CF NetCDF file tile by tile."""

from __future__ import annotations

import functools
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import netCDF4
import numpy as np
import pytest
import torch
import xarray as xr
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "distributed"))

import dsworker  # noqa: E402
from distlaunch import ROOT, run, worker_env  # noqa: E402

from hpcdiff.core import Module  # noqa: E402
from hpcdiff.core.module import read_metadata  # noqa: E402
from hpcdiff.data.tiles import Tile, split_domain  # noqa: E402
from hpcdiff.diffusion.multi_diffusion import (  # noqa: E402
    MultiDiffusionModel2D,
    MultiDiffusionPredictor,
)
from hpcdiff.diffusion.noise_schedulers import EDMNoiseScheduler  # noqa: E402
from hpcdiff.distributed.checkpoint import list_checkpoints  # noqa: E402
from hpcdiff.distributed.consolidate import ema_state_dict  # noqa: E402
from hpcdiff.distributed.domain import (  # noqa: E402
    DomainDecomposedNoiseScheduler,
    DomainMesh,
    block_noise,
    intersect,
)
from hpcdiff.generate.distributed import sample_tiled  # noqa: E402
from hpcdiff.generate.tiled import TiledMultiDiffusionPredictor, _axis_plan  # noqa: E402

# Strides (7, 5), (14, 14), (5, 7), (5, 7); DPS and conditioned cases are chunked.
GEOMETRIES = {
    "a": dict(patch=[12, 10], overlap=3, boundary=2, window="uniform", solver="heun"),
    "b": dict(patch=[16, 16], overlap=2, boundary=0, window="cosine", solver="euler", chunk=3),
    "c": dict(patch=[10, 12], overlap=4, boundary=1, window="cosine", solver="heun", chunk=5),
    "d": dict(patch=[10, 12], overlap=4, boundary=1, window="uniform", solver="euler", chunk=5,
              dps=True),
    "k": dict(patch=[12, 10], overlap=3, boundary=1, window="cosine", solver="heun", chunk=4,
              condition=True, overlap_comm=False),
}  # fmt: skip
CHURN = {"S_churn": 20.0, "num_steps": dsworker.STEPS}
GEOMETRIES["s"] = dict(GEOMETRIES["a"], boundary=1, solver="edm_stochastic_heun", options=CHURN)
GEOMETRIES["x"] = dict(GEOMETRIES["b"], solver="edm_stochastic_exponential_euler", options=CHURN)
# A sinusoidal embedding is computed per run of patches (never on the global grid).
GEOMETRIES["e"] = dict(GEOMETRIES["a"], pe=("sinusoidal", 8), chunk=3)
# The adaptive solver's error norm is taken over the whole sample: every rank takes the same
# steps (a per-tile norm would desynchronise the halo exchanges and hang).
GEOMETRIES["v"] = dict(GEOMETRIES["c"], solver="adaptive", options={"rtol": 1e-2, "atol": 1e-2})
LAUNCHES = {  # (launcher, ranks) -> [(geometry, tile grid)]; the first case is also written
    ("torchrun", 1): [("a", [1, 1]), ("d", [1, 1]), ("e", [1, 1])],
    ("mpiexec", 1): [("k", [1, 1]), ("b", [1, 1])],
    ("torchrun", 2): [("b", [2, 1]), ("a", [1, 2]), ("s", [2, 1]), ("d", [1, 2]), ("v", [1, 2])],
    ("mpiexec", 2): [("c", [1, 1]), ("k", [2, 1]), ("x", [1, 2]), ("d", [2, 1]), ("e", [1, 2])],
    ("torchrun", 4): [("c", [1, 2]), ("a", [2, 2]), ("b", [1, 4]), ("s", [2, 2]), ("x", [1, 4]),
                      ("d", [2, 2]), ("k", [4, 1]), ("e", [2, 2])],
    ("mpiexec", 4): [("d", [1, 4]), ("a", [4, 1]), ("b", [2, 2]), ("s", [1, 2]), ("c", [2, 2]),
                     ("v", [2, 2])],
}  # fmt: skip
RANGES = {"sample", "sample.step", "sample.denoise", "patch.extract", "model.forward",
          "patch.fuse"}  # fmt: skip


def _cases(key: tuple[str, int]) -> list[dict]:
    return [{**GEOMETRIES[g], "name": f"{g}{grid[0]}x{grid[1]}", "grid": grid, "write": i == 0}
            for i, (g, grid) in enumerate(LAUNCHES[key])]  # fmt: skip


@functools.cache
def reference(geometry: str, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    return dsworker.reference(GEOMETRIES[geometry], group)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A CF input file on the 37 x 29 grid: lat / lon, 2-D auxiliary coordinates, a grid
    mapping, a noleap time axis in hours, attributes on each variable."""
    path = tmp_path_factory.mktemp("inputs") / "target.nc"
    H, W = dsworker.SHAPE
    with netCDF4.Dataset(path, "w") as nc:
        nc.Conventions = "CF-1.8"
        for name, size in (("time", None), ("lat", H), ("lon", W)):
            nc.createDimension(name, size)
        t = nc.createVariable("time", "f8", ("time",))
        t.setncatts({"units": "hours since 2001-02-27 00:00", "calendar": "noleap",
                     "standard_name": "time", "axis": "T"})  # fmt: skip
        t[:] = [0.0, 36.0]
        for name, n, std, units in (("lat", H, "latitude", "degrees_north"),
                                    ("lon", W, "longitude", "degrees_east")):  # fmt: skip
            v = nc.createVariable(name, "f8", (name,))
            v.setncatts({"standard_name": std, "units": units, "long_name": std})
            v[:] = np.linspace(40.0, 41.0, n)
        crs = nc.createVariable("crs", "i4", ())
        crs.grid_mapping_name = "latitude_longitude"
        for name in ("lat_2d", "lon_2d"):
            v = nc.createVariable(name, "f4", ("lat", "lon"))
            v.units = "degrees"
            v[:] = np.random.default_rng(1).random((H, W))
        for name, long_name in zip(dsworker.VARIABLES, ("eastward wind", "northward wind")):
            v = nc.createVariable(name, "f4", ("time", "lat", "lon"), fill_value=-9999.0)
            v.setncatts({"units": "m s-1", "standard_name": f"{long_name.replace(' ', '_')}",
                         "long_name": long_name, "coordinates": "lat_2d lon_2d",
                         "grid_mapping": "crs", "scale_factor": 1.0})  # fmt: skip
            v[:] = np.zeros((2, H, W))
    return path


@pytest.fixture(scope="module", params=list(LAUNCHES), ids=lambda p: f"{p[0]}-{p[1]}")
def launch(request, tmp_path_factory, inputs) -> tuple[tuple[str, int], Path]:
    launcher, world = request.param
    out = tmp_path_factory.mktemp(f"{launcher}{world}")
    env = worker_env(HPCDIFF_SCRIPT=str(HERE / "dsworker.py"))
    if launcher == "torchrun":
        env["NPROC_PER_NODE"] = str(world)
    else:  # the `mpich` wheel's hydra launcher
        env.update(NP=str(world), MPIRUN=str(Path(sys.executable).parent / "mpiexec"))
    script = ROOT / "launchers" / ("torchrun.sh" if launcher == "torchrun" else "mpirun.sh")
    cases = json.dumps(_cases(request.param))
    run([str(script), "--out", str(out), "--cases", cases, "--inputs", str(inputs)], env)
    return request.param, out


def _group_results(out: Path, case: dict, group: int) -> list[dict]:
    D = case["grid"][0] * case["grid"][1]
    ranks = range(group * D, (group + 1) * D)
    return [torch.load(out / f"{case['name']}_r{r}.pt", weights_only=True) for r in ranks]


def _assemble(results: list[dict], key: str) -> torch.Tensor:
    first = results[0][key]
    full = torch.full((*first.shape[:2], *dsworker.SHAPE), torch.nan)
    for saved in results:
        r0, r1, c0, c1 = saved["tile"]
        assert bool(full[..., r0:r1, c0:c1].isnan().all())  # tiles do not overlap
        full[..., r0:r1, c0:c1] = saved[key]
    return full


@pytest.mark.multiprocess
def test_tiles_equal_single_process_sampling(launch):
    key, out = launch
    for case in _cases(key):
        groups = key[1] // (case["grid"][0] * case["grid"][1])
        for group in range(groups):
            xN_ref, x0_ref = reference(case["name"][0], group)
            results = _group_results(out, case, group)
            seen = set()
            halo = {"comm.halo"} if len(results) > 1 else set()
            guided = {"sample.guidance"} if case.get("dps") else set()
            for saved in results:
                names = set(saved["ranges"])  # a rank without patches runs no model
                assert {"sample", "sample.step", "sample.denoise"} <= names
                assert halo <= names - RANGES <= halo | guided
                seen |= names
            assert RANGES | guided <= seen
            assert torch.equal(_assemble(results, "xN"), xN_ref)  # same noise, full cover
            err = float((_assemble(results, "x0") - x0_ref).abs().max())
            assert err <= 1e-5 * float(x0_ref.abs().max()), (key, case["name"], group, err)


@pytest.mark.multiprocess
def test_scheduler_shares_noise_levels_not_noise_fields(launch):
    key, out = launch
    for case in _cases(key):
        groups = key[1] // (case["grid"][0] * case["grid"][1])
        times = []
        for group in range(groups):
            results = _group_results(out, case, group)
            times.append(results[0]["sample_time"])
            for saved in results:  # the group's first rank drew, the others received
                assert torch.equal(saved["sample_time"], times[-1])
                assert abs(float(saved["noise"].std()) - 1) < 0.15
            corners = [s["noise"][..., :4, :4] for s in results]
            assert all(not torch.equal(a, b) for a, b in zip(corners, corners[1:]))
        assert all(not torch.equal(a, b) for a, b in zip(times, times[1:]))


@pytest.mark.multiprocess
def test_one_cf_netcdf_written_tile_by_tile(launch, inputs):
    key, out = launch
    case = _cases(key)[0]
    groups = key[1] // (case["grid"][0] * case["grid"][1])
    with xr.open_dataset(out / f"{case['name']}.nc") as ds, xr.open_dataset(inputs) as src:
        assert ds.attrs["Conventions"] == "CF-1.8"
        assert ds["member"].attrs["standard_name"] == "realization"
        assert ds["time"].values[0] == src["time"].values[1]  # decoded noleap dates
        assert ds["time"].encoding["units"] == src["time"].encoding["units"]
        for name in ("lat", "lon", "lat_2d", "lon_2d", "crs"):
            xr.testing.assert_identical(ds[name], src[name])
        for v in dsworker.VARIABLES:
            for written in (ds[v], ds[f"{v}_truth"]):
                assert written.dims[-3:] == ("time", "lat", "lon")
                for attr in ("units", "standard_name", "long_name", "grid_mapping"):
                    assert written.attrs[attr] == src[v].attrs[attr]
                assert written.encoding["coordinates"] == "lat_2d lon_2d"
        xN = _assemble(_group_results(out, case, 0), "xN")[0]
        truth = np.stack([ds[f"{v}_truth"].values[0] for v in dsworker.VARIABLES])
        np.testing.assert_array_equal(truth, xN.numpy())
        for group in range(groups):
            x0 = _assemble(_group_results(out, case, group), "x0")
            for e in range(x0.shape[0]):
                member = np.stack([ds[v].values[group + e * groups, 0] for v in dsworker.VARIABLES])
                np.testing.assert_array_equal(member, x0[e].numpy())
    with netCDF4.Dataset(out / f"{case['name']}.nc") as nc:  # no pre-filled ensemble
        assert "_FillValue" not in nc[dsworker.VARIABLES[0]].ncattrs()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A 2-step run of `hpcdiff train` on a 40 x 44 synthetic dataset with a coarse condition
    and static fields (one process)."""
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
        "sample": {"num_steps": 3, "ensemble": 2, "times": 2, "overlap_pix": 4,
                   "boundary_pix": 1},
    }  # fmt: skip
    (work / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    subprocess.run([hpcdiff, "train", "--config", "tiny.yaml"], cwd=work, check=True,
                   capture_output=True)  # fmt: skip
    return work / "runs" / "tiny"


def _sample(run: Path, ranks: int, *overrides: str) -> xr.Dataset:
    """`hpcdiff sample` of ``run`` on ``ranks`` torchrun ranks (0: one plain process)."""
    env = worker_env(HPCDIFF_SCRIPT=str(HERE / "dsworker.py"), NPROC_PER_NODE=str(ranks))
    cmd = (
        [str(ROOT / "launchers" / "torchrun.sh")]
        if ranks
        else [sys.executable, env["HPCDIFF_SCRIPT"]]
    )
    proc = subprocess.run([*cmd, "--generate", str(run), *overrides], cwd=run.parents[1],
                          env=env, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return xr.load_dataset(run / "samples" / "samples.nc")


def _logs(run: Path) -> list[str]:
    return [(run / "logs" / f"rank{rank:05d}.log").read_text() for rank in (0, 1)]


def _merges(log: str) -> tuple[int, int]:
    """(merges of the checkpoint, reuses of a current model.mdlus) logged in ``log``."""
    return log.count("(once, on rank 0)"), log.count("consolidated from")


@pytest.mark.multiprocess
def test_hpcdiff_sample_on_tiles_matches_one_process_and_the_inputs(trained_run):
    (trained_run / "model.mdlus").unlink(missing_ok=True)
    tiled = _sample(trained_run, 2, "sample.domain_grid=[1,2]")  # one sample over 2 tiles
    tiles = set()
    logs = _logs(trained_run)
    for log in logs:  # each rank logs its own tile to its own file
        tiles |= set(re.findall(r"members sampled on tile (Tile\(.*?\))", log))
    assert len(tiles) == 2
    # The shards were merged once, by rank 0, into the model.mdlus both ranks loaded: it holds
    # exactly the EMA weights of the newest checkpoint.
    assert _merges(logs[0]) == (1, 0) and _merges(logs[1]) == (0, 0)
    ckpt = list_checkpoints(trained_run / "checkpoints")[0]
    recorded = read_metadata(trained_run / "model.mdlus")["consolidated_from"]
    assert recorded["step"] == 2 and recorded["weights"] == "ema"
    merged = Module.from_checkpoint(trained_run / "model.mdlus").state_dict()
    expected = ema_state_dict(ckpt)
    assert merged.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(merged[name], value, rtol=0, atol=0, msg=name)
    whole = _sample(trained_run, 0)
    assert _merges(_logs(trained_run)[0]) == (1, 1)  # the current file is reused, not merged
    variables = ["t2m", "tp"]
    assert (
        sorted(tiled.data_vars)
        == sorted(whole.data_vars)
        == sorted([*variables, *(f"{v}_truth" for v in variables)])
    )
    for name, value in whole.data_vars.items():
        scale = float(np.nanmax(np.abs(value.values)))
        np.testing.assert_allclose(tiled[name].values, value.values, rtol=0, atol=1e-5 * scale,
                                   err_msg=name)  # fmt: skip
    assert not np.allclose(whole["t2m"].values[0], whole["t2m"].values[1])  # members differ
    files = sorted(trained_run.parents[1].glob("data/fine_*.nc"))
    with xr.open_mfdataset(files) as src:
        times = whole["time"].values
        assert len(times) == 2 and set(times) <= set(src["time"].values)
        for name in ("lat", "lon"):
            xr.testing.assert_identical(whole[name], src[name].load())
        for v in variables:
            for written in (whole[v], whole[f"{v}_truth"]):
                for attr in ("units", "standard_name", "long_name"):
                    assert written.attrs[attr] == src[v].attrs[attr], (v, attr)
            target = src[v].sel(time=times).values
            np.testing.assert_allclose(whole[f"{v}_truth"].values, target, rtol=1e-4,
                                       atol=1e-5 * float(np.nanmax(np.abs(target))))  # fmt: skip


def test_bf16_sampling_runs_the_model_in_bf16_and_stays_close_to_fp32():
    case = GEOMETRIES["c"]
    mesh, seeds = DomainMesh.single(dsworker.SHAPE), dsworker.seeds_of(case, 0)
    runs = {}
    for precision in ("fp32", "bf16"):
        runs[precision] = sample_tiled(
            dsworker.predictor(case), mesh, EDMNoiseScheduler(), seeds, dsworker.CHANNELS,
            dsworker.STEPS, "heun", precision=precision,
        )  # fmt: skip
    fp32, bf16 = runs["fp32"], runs["bf16"]
    assert bf16.dtype == torch.float32  # the state and the result stay float32
    err = float((bf16 - fp32).abs().max() / fp32.abs().max())
    # The convolution ran in bf16 (8-bit mantissa: 2^-9 = 2e-3 relative rounding of every
    # input and weight), amplified through the 3 solver steps: 1.5e-2 of the largest value was
    # measured. fp32 would give 0; another model or noise would differ by O(1).
    assert 1e-3 < err < 5e-2, err


def test_fp16_sampling_on_the_cpu_is_a_config_error():
    from hpcdiff.config import ConfigError
    from hpcdiff.generate.distributed import precision_dtype

    assert precision_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    assert precision_dtype("fp32", torch.device("cpu")) is None
    with pytest.raises(ConfigError, match="'sample.precision': fp16 autocast needs a CUDA"):
        precision_dtype("fp16", torch.device("cpu"))


def test_stochastic_solvers_inject_noise():
    _, deterministic = dsworker.reference({**GEOMETRIES["s"], "solver": "heun", "options": {}})
    _, churned = reference("s", 0)
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
    [(37, 12, 3, 2, 4), (29, 16, 2, 0, 4), (29, 12, 4, 1, 3), (8, 8, 0, 0, 2), (90, 12, 2, 1, 2)],
)
def test_every_patch_is_owned_by_exactly_one_tile(L, size, overlap, b, parts):
    stride = size - overlap - b
    bounds = [i * L // parts for i in range(parts + 1)]
    plans = [_axis_plan(lo, hi, L, size, stride, b) for lo, hi in zip(bounds, bounds[1:])]
    owned = sorted(i for p in plans if p is not None for i in range(p.i0, p.i1))
    assert owned == list(range(math.ceil(L / stride)))
    for lo, hi, p in zip(bounds, bounds[1:], plans):
        if p is None:
            continue
        # The window's indices stay inside the gathered region.
        assert int(p.index.min()) == 0 and int(p.index.max()) == p.need[1] - p.need[0] - 1
        # Interior patches are exactly those whose reads stay inside the tile.
        for i in range(p.i0, p.i1):
            reads = p.index[(i - p.i0) * stride :][:size] + p.need[0]
            inside = lo <= int(reads.min()) and int(reads.max()) < hi
            assert inside == (p.inner[0] <= i < p.inner[1]), (i, p.inner)


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


def test_scheduler_wraps_gaussian_schedulers_only_and_checks_latents():
    from hpcdiff.diffusion.noise_schedulers import StudentTEDMNoiseScheduler

    mesh = DomainMesh.single(dsworker.SHAPE)
    scheduler = DomainDecomposedNoiseScheduler(EDMNoiseScheduler(), mesh, [1, 2])
    tN = scheduler.timesteps(4)[:1].expand(2)
    x = scheduler.init_latents((2, *dsworker.SHAPE), tN)
    assert torch.equal(x, block_noise([1, 2], 2, mesh.tile) * tN[0])  # sigma = t for EDM
    assert scheduler.sigma == scheduler.inner_scheduler.sigma  # the math is the inner's
    with pytest.raises(ValueError, match="does not match"):
        scheduler.init_latents((2, 36, 29), tN)
    with pytest.raises(ValueError, match="one seed per sample"):
        scheduler.init_latents((2, *dsworker.SHAPE), tN[:1])
    with pytest.raises(ValueError, match="non-Gaussian"):
        DomainDecomposedNoiseScheduler(StudentTEDMNoiseScheduler(), mesh, [1]).init_latents(
            (2, *dsworker.SHAPE), tN[:1]
        )
    with pytest.raises(ValueError, match="only wraps LinearGaussianNoiseScheduler"):
        DomainDecomposedNoiseScheduler(object(), mesh)


@pytest.mark.parametrize("grid", [(1, 2), (2, 1), (1, 3), (2, 2)])
def test_the_halo_gather_covers_what_border_patches_read_not_the_tile(grid):
    shape, patch = (120, 100), (12, 10)  # stride (7, 5) with overlap 3, boundary 2
    md = MultiDiffusionModel2D(dsworker.Net(2), shape, "linear", 2)
    md.set_random_patching(patch_shape=patch, patch_num=1)
    pred = MultiDiffusionPredictor(md)
    pred.set_patching(3, 2)
    D = grid[0] * grid[1]
    for r in range(D):
        t = TiledMultiDiffusionPredictor(pred, DomainMesh(grid, shape, r, D))
        halo, need = t.halo[r], t.need[r]
        _, border = t._chunks(1)
        if halo is None:  # all its patches read inside its tile: it gathers nothing
            assert not border
            continue
        assert intersect(halo, need) == halo and border  # inside what its patches read
        for c in border:  # every border read lies in the gathered rectangle
            for take, size in zip(c.src, halo.shape):
                index = torch.arange(take.start, take.start + take.length)
                index = index if take.index is None else take.index
                assert 0 <= int(index.min()) and int(index.max()) < size
        if D == 2:  # one cut: a strip about a patch wide, not the tile (+ margin)
            axis = 0 if grid[0] > 1 else 1
            assert halo.shape[axis] <= 2 * patch[axis] < need.shape[axis]
            assert halo.shape[1 - axis] == need.shape[1 - axis]


def test_tiled_predictor_rejects_bad_input():
    pred = dsworker.predictor(GEOMETRIES["a"])
    with pytest.raises(ValueError, match="mesh.shape"):
        TiledMultiDiffusionPredictor(pred, DomainMesh.single((36, 29)))
    tiled = TiledMultiDiffusionPredictor(pred, DomainMesh.single(dsworker.SHAPE))
    with pytest.raises(ValueError, match="must cover tile"):
        tiled(torch.zeros(1, 2, 36, 29), torch.ones(1))
    with pytest.raises(ValueError, match="Unknown solver"):
        sample_tiled(pred, DomainMesh.single(dsworker.SHAPE), None, [0], 2, 2, solver="rk9")
    with pytest.raises(ValueError, match="tiled for"):
        sample_tiled(tiled, DomainMesh((1, 1), dsworker.SHAPE, 1, 2), EDMNoiseScheduler(), [0],
                     2, 2)  # fmt: skip
