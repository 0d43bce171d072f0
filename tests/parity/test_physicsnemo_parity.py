"""hpcdiff against stored outputs of the reference, nvidia-physicsnemo 2.2.2.

The fixtures in ``fixtures/`` were written once by ``scripts/make_parity_fixtures.py`` with the
reference installed in a throwaway venv (that script says how): tiny backbones saved by the
reference's own ``Module.save`` with the reference's outputs on fixed inputs, scheduler
quantities and every step of ``sample()`` with each of the reference's solvers. Nothing here
is computed by hpcdiff on both sides.
"""

from pathlib import Path

import pytest
import torch

import hpcdiff.diffusion.noise_schedulers as schedulers
from hpcdiff.diffusion.samplers import sample
from hpcdiff.models import DiT, SongUNet, SongUNetPosEmbd, load_physicsnemo

FIXTURES = Path(__file__).parent / "fixtures"
MODELS = torch.load(FIXTURES / "models.pt", weights_only=True)
DIFFUSION = torch.load(FIXTURES / "diffusion.pt", weights_only=True)
TOL = dict(rtol=1e-5, atol=1e-6)  # float32, and a different torch build made the fixtures


def assert_close_per_sample(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """Equal to float32 rounding at each sample's scale: max |a - e| <= 1e-4 max |e| per
    sample. The libraries order the same float32 terms differently; the VP rhs at t = 1 is a
    difference of terms 100x its size, and a trajectory carries its steps' rounding on (a
    wrong formula is off by O(1))."""
    err = (actual - expected).abs().flatten(1).amax(1)
    scale = expected.abs().flatten(1).amax(1)
    assert bool((err <= 1e-4 * scale + 1e-7).all()), f"{what}: errors {err} at scales {scale}"


def toy_x0(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The fixture script's x0-predictor: 0.8 tanh(x) / (1 + t^2)."""
    return 0.8 * torch.tanh(x) / (1 + t.reshape(-1, *([1] * (x.ndim - 1))) ** 2)


def test_fixtures_come_from_the_reference():
    assert MODELS["meta"]["physicsnemo"] == DIFFUSION["meta"]["physicsnemo"] == "2.2.2"


@pytest.mark.parametrize(
    "name, cls", [("songunet", SongUNet), ("songunet_posembd", SongUNetPosEmbd), ("dit", DiT)]
)
def test_reference_checkpoint_loads_and_gives_the_reference_output(name, cls):
    net = load_physicsnemo(FIXTURES / f"{name}.mdlus").eval()
    assert type(net) is cls
    with torch.no_grad():
        out = net(*MODELS[name]["inputs"])
    torch.testing.assert_close(out, MODELS[name]["output"], **TOL)


@pytest.mark.parametrize("name", sorted(DIFFUSION["schedulers"]))
def test_scheduler_quantities_match_the_reference(name):
    ref = DIFFUSION["schedulers"][name]
    sch = getattr(schedulers, f"{name}NoiseScheduler")()
    grid = sch.timesteps(len(ref["timesteps"]) - 1)
    torch.testing.assert_close(grid, ref["timesteps"], **TOL)
    t = grid[:-1]
    x = torch.randn(len(t), 2, 3, 4, generator=torch.Generator().manual_seed(5))
    for fn in ("sigma", "alpha", "sigma_dot", "alpha_dot", "loss_weight"):
        torch.testing.assert_close(getattr(sch, fn)(t), ref[fn], **TOL, msg=fn)
    torch.testing.assert_close(sch.sigma_inv(ref["sigma"]), ref["sigma_inv"], **TOL)
    for kind in ("ode", "sde"):
        denoiser = sch.get_denoiser(x0_predictor=toy_x0, denoising_type=kind)
        assert_close_per_sample(denoiser(x, t), ref[f"denoiser_{kind}"], f"{name} {kind}")
    torch.manual_seed(11)  # the same draws from the global generator as the reference's
    torch.testing.assert_close(sch.add_noise(x, t), ref["add_noise"], **TOL)


TRAJECTORIES = DIFFUSION["trajectories"]
CASES = [k for k in TRAJECTORIES if "/" in k]


@pytest.mark.parametrize("case", CASES)
def test_sampler_trajectories_match_the_reference(case):
    label, solver = case.split("/")
    sch = {"EDM": schedulers.EDMNoiseScheduler, "VP": schedulers.VPNoiseScheduler}[label]()
    xN = TRAJECTORIES["xN"] * TRAJECTORIES["xN_scale"][label]
    ref = TRAJECTORIES[case]
    torch.manual_seed(17)  # the stochastic solvers draw from the global generator
    states = sample(sch.get_denoiser(x0_predictor=toy_x0), xN, sch, len(ref), solver=solver,
                    solver_options=dict(TRAJECTORIES["options"][solver]),
                    time_eval=list(range(len(ref))))  # fmt: skip
    assert_close_per_sample(torch.stack(states), ref, case)  # per step
