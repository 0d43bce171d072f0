"""Config rules: patch against grid, multi-diffusion patch grid, domain grid (run time), and
the section rules that reject impossible combinations at load time (solver, positional
embedding channels, scheduler arguments, NVMe offload, paths inside the run directory)."""

import typing

import pytest
import torch

from hpcdiff.config import ConfigError, from_dict
from hpcdiff.config.checks import (
    check_domain_grid,
    check_patch_fits,
    check_patch_grid,
    check_relative_path,
)
from hpcdiff.diffusion.multi_diffusion import GridPatching2D, MultiDiffusionModel2D
from hpcdiff.diffusion.samplers import SOLVERS
from hpcdiff.distributed.engine import deepspeed_config
from hpcdiff.experiment.build import _SCHEDULERS, build_scheduler
from hpcdiff.experiment.config import DiffusionConfig, OptimConfig, TrainConfig

DATA = {"files": ["data/x_*.nc"], "variables": ["t2m"]}


def load(**sections) -> TrainConfig:
    return from_dict(TrainConfig, {"data": DATA, **sections})


@pytest.mark.parametrize("patch", [(65, 64), (64, 97)])
def test_patch_larger_than_the_grid_names_the_key_and_the_limit(patch):
    with pytest.raises(ConfigError, match=r"'data.patch_shape'.*rows <= 64 and cols <= 96"):
        check_patch_fits(patch, (64, 96))


@pytest.mark.parametrize("overlap, boundary", [(0, 0), (4, 2), (15, 0), (5, 5), (16, 0), (8, 4)])
def test_patch_grid_rule_is_grid_patching_2d_rule(overlap, boundary):
    """check_patch_grid accepts exactly what GridPatching2D accepts for a 16 x 16 patch."""
    try:
        GridPatching2D((64, 64), (16, 16), overlap_pix=overlap, boundary_pix=boundary)
        accepted = True
    except ValueError:
        accepted = False
    if accepted:
        check_patch_grid((16, 16), overlap, boundary)
    else:
        with pytest.raises(ConfigError, match="'sample.overlap_pix'"):
            check_patch_grid((16, 16), overlap, boundary)


def test_negative_overlap_and_domain_grid_rules():
    with pytest.raises(ConfigError, match="'sample.boundary_pix' must be >= 0"):
        check_patch_grid((16, 16), 0, -1)
    with pytest.raises(ConfigError, match=r"'sample.domain_grid' must be \[py, px\] >= 1"):
        check_domain_grid((0, 2), 4, (64, 64))
    with pytest.raises(ConfigError, match=r"allowed: py \* px in \[1, 2, 3, 4, 6, 12\]"):
        check_domain_grid((5, 1), 12, (64, 64))
    with pytest.raises(ConfigError, match="allowed: py <= 64 and px <= 2"):
        check_domain_grid((1, 4), 4, (64, 2), key="domain.grid")
    check_domain_grid((2, 3), 12, (64, 64))


def test_every_solver_name_loads_and_a_typo_lists_the_choices():
    for name in SOLVERS:
        assert load(sample={"solver": name}).sample.solver == name
    with pytest.raises(ConfigError, match=r"'sample.solver': 'hune' is not a solver; allowed: "):
        load(sample={"solver": "hune"})
    with pytest.raises(ConfigError) as err:
        load(sample={"solver": "hune"})
    assert all(repr(name) in str(err.value) for name in SOLVERS)


@pytest.mark.parametrize(
    "sample, key", [({"num_steps": 0}, "num_steps"), ({"chunk_size": 0}, "chunk_size"),
                    ({"ensemble": 0}, "ensemble"), ({"domain_grid": [0, 1]}, "domain_grid")],
)  # fmt: skip
def test_sample_counts_are_checked_at_load(sample, key):
    with pytest.raises(ConfigError, match=f"'sample.{key}' must be .*>= "):
        load(sample=sample)


@pytest.mark.parametrize("kind", ["sinusoidal", "linear", "learnable"])
@pytest.mark.parametrize("channels", range(1, 10))
def test_positional_embedding_rule_is_the_model_rule(kind, channels):
    """The config accepts exactly the channel counts MultiDiffusionModel2D accepts."""
    try:
        MultiDiffusionModel2D(torch.nn.Identity(), (8, 8), kind, channels)
        accepted = True
    except ValueError:
        accepted = False
    model = {"positional_embedding": kind, "channels_positional_embedding": channels}
    if accepted:
        load(model=model)
    else:
        with pytest.raises(ConfigError, match="'model.channels_positional_embedding'.*allowed: "):
            load(model=model)


@pytest.mark.parametrize(
    "kind, channels, allowed",
    [("sinusoidal", 6, "a multiple of 4"), ("sinusoidal", 0, "a multiple of 4"),
     ("linear", 4, "allowed: 2"), ("learnable", 0, "allowed: >= 1")],
)  # fmt: skip
def test_positional_embedding_channels_name_both_keys(kind, channels, allowed):
    model = {"positional_embedding": kind, "channels_positional_embedding": channels}
    with pytest.raises(ConfigError, match=f"does not fit model.positional_embedding '{kind}'"):
        load(model=model)
    with pytest.raises(ConfigError, match=allowed):
        load(model=model)
    load(model={"positional_embedding": None, "channels_positional_embedding": channels})


def test_every_scheduler_choice_has_a_class():
    choices = typing.get_args(typing.get_type_hints(DiffusionConfig)["scheduler"])
    assert set(choices) == set(_SCHEDULERS)


@pytest.mark.parametrize(
    "scheduler, args",
    [("edm", {"sigma_max": 40.0, "P_mean": -1.0}), ("vp", {"beta_min": 0.2}),
     ("iddpm", {"M": 500}), ("student_t_edm", {"nu": 5}), ("ve", {})],
)  # fmt: skip
def test_scheduler_args_that_load_also_build(scheduler, args):
    precond = scheduler if scheduler in ("ve", "vp", "iddpm") else "edm"
    diffusion = {"scheduler": scheduler, "preconditioner": precond, "scheduler_args": args}
    cfg = load(diffusion=diffusion).diffusion
    build_scheduler(cfg.scheduler, cfg.scheduler_args)


def test_the_loss_weight_and_the_preconditioner_use_the_same_sigma_data():
    from hpcdiff.train.loop import build_objective

    unet = {"model_channels": 8, "channel_mult": [1], "num_blocks": 1}
    diffusion = {"scheduler": "edm", "sigma_data": 0.8, "scheduler_args": {"rho": 5}}
    cfg = load(diffusion=diffusion, model={"name": "SongUNet-S", "args": unet})
    assert cfg.diffusion.resolved_scheduler_args() == {"sigma_data": 0.8, "rho": 5}
    objective = build_objective(cfg, (32, 32))
    precond = objective.model.model  # MultiDiffusionModel2D -> EDMPreconditioner
    assert float(objective.scheduler.sigma_data) == pytest.approx(0.8)
    assert float(precond.sigma_data) == pytest.approx(0.8)
    ve = load(diffusion={"scheduler": "ve", "preconditioner": "ve"}).diffusion
    assert ve.resolved_scheduler_args() == {}  # VE has no sigma_data
    message = r"'diffusion.scheduler_args.sigma_data' \(0.5\) differs from diffusion.sigma_data"
    with pytest.raises(ConfigError, match=message):
        load(diffusion={"scheduler": "edm", "scheduler_args": {"sigma_data": 0.5}})


@pytest.mark.parametrize(
    "scheduler, key, allowed",
    [("edm", "beta_min", "'sigma_min', 'sigma_max', 'rho'"), ("vp", "sigma_max", "'beta_d'"),
     ("edm", "sigma", "'P_std'")],
)  # fmt: skip
def test_scheduler_args_of_another_scheduler_are_rejected(scheduler, key, allowed):
    diffusion = {"scheduler": scheduler, "preconditioner": scheduler, "scheduler_args": {key: 1}}
    with pytest.raises(ConfigError) as err:
        load(diffusion=diffusion)
    message = str(err.value)
    assert f"'diffusion.scheduler_args.{key}' is not an argument of " in message
    assert f"(diffusion.scheduler '{scheduler}'); allowed: [" in message and allowed in message


@pytest.mark.parametrize(
    "zero, message",
    [({"stage": 2, "offload_optimizer": "nvme", "nvme_path": "/nvme"},
      r"'zero.offload_optimizer' needs zero.stage=3 .*at stages 1-2 use .*offload_optimizer=cpu"),
     ({"stage": 2, "offload_param": "nvme", "nvme_path": "/nvme"}, "'zero.offload_param' needs"),
     ({"stage": 1, "nvme_path": "/nvme"}, "'zero.nvme_path' is only used with NVMe offload"),
     ({"stage": 3, "offload_optimizer": "cpu", "nvme_path": "/nvme"}, "'zero.nvme_path' is only"),
     ({"stage": 3, "offload_optimizer": "nvme"}, "'zero.nvme_path' must name a directory")],
)  # fmt: skip
def test_nvme_offload_needs_stage_3_and_a_path(zero, message):
    with pytest.raises(ConfigError, match=message):
        load(zero=zero)


def test_nvme_offload_at_stage_3_reaches_the_deepspeed_config():
    zero = {"stage": 3, "offload_optimizer": "nvme", "offload_param": "nvme", "nvme_path": "/nv"}
    cfg = load(zero=zero).zero
    ds = deepspeed_config(cfg, OptimConfig(), 2, 4, torch.device("cpu"))["zero_optimization"]
    assert ds["offload_optimizer"] == ds["offload_param"] == {"device": "nvme", "nvme_path": "/nv"}
    load(zero={"stage": 1, "offload_optimizer": "cpu"})


@pytest.mark.parametrize("bad", ["../other", "a/../../b", "/tmp/run", "", ".", "./", "a\0b"])
def test_run_name_and_checkpoint_dir_stay_inside_the_run_directory(bad):
    with pytest.raises(ConfigError, match=r"'run.name': .*; allowed: a relative path without"):
        load(run={"name": bad})
    with pytest.raises(ConfigError, match=r"'checkpoint.dir': .*; allowed: a relative path"):
        load(checkpoint={"dir": bad})


def test_relative_run_names_and_an_absolute_out_dir_are_fine(tmp_path):
    cfg = load(run={"name": "group/exp1", "out_dir": str(tmp_path)}, checkpoint={"dir": "ck/a"})
    assert cfg.run.dir == tmp_path / "group" / "exp1"
    check_relative_path("./a/b", "run.name")
    with pytest.raises(ConfigError, match="'run.name': '/abs' is absolute"):
        check_relative_path("/abs", "run.name")
