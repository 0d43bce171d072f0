"""The public seams of the solvers: ``noise_fn=`` on every solver, ``norm_fn=`` on the adaptive
one, and ``make_solver`` passing them (what tiled sampling plugs into)."""

import pytest
import torch

from hpcdiff.diffusion.noise_schedulers import EDMNoiseScheduler
from hpcdiff.diffusion.samplers import SOLVERS, AdaptiveSolver, make_solver, sample

STOCHASTIC = ["edm_stochastic_euler", "edm_stochastic_heun", "edm_stochastic_exponential_euler"]
OPTIONS = {"S_churn": 30.0, "num_steps": 4}


def denoiser_and_start():
    edm = EDMNoiseScheduler()
    denoiser = edm.get_denoiser(x0_predictor=lambda x, t: 0.5 * torch.tanh(x))
    xN = 20 * torch.randn(2, 3, 5, 4, generator=torch.Generator().manual_seed(1))
    return edm, denoiser, xN


@pytest.mark.parametrize("name", STOCHASTIC)
def test_noise_fn_draws_all_of_a_stochastic_solvers_noise(name):
    edm, denoiser, xN = denoiser_and_start()
    options = dict(OPTIONS, renoise=0.5) if "exponential" in name else OPTIONS
    by_generator = make_solver(
        name, denoiser, edm, dict(options, generator=torch.Generator().manual_seed(5))
    )
    gen, calls = torch.Generator().manual_seed(5), []

    def noise_fn(x):
        calls.append(x.shape)
        return torch.randn(x.shape, generator=gen, dtype=x.dtype)

    by_noise_fn = make_solver(name, denoiser, edm, options, noise_fn=noise_fn)
    a = sample(denoiser, xN, edm, 4, solver=by_generator)
    b = sample(denoiser, xN, edm, 4, solver=by_noise_fn)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert calls and all(shape == xN.shape for shape in calls)
    zero = sample(
        denoiser,
        xN,
        edm,
        4,
        solver=make_solver(name, denoiser, edm, options, noise_fn=torch.zeros_like),
    )
    assert (zero - a).abs().max() > 1e-3  # the noise mattered


@pytest.mark.parametrize("name", sorted(set(SOLVERS) - set(STOCHASTIC)))
def test_deterministic_solvers_take_noise_fn_and_never_call_it(name):
    edm, denoiser, xN = denoiser_and_start()

    def noise_fn(x):
        raise AssertionError(f"{name} drew noise")

    a = sample(denoiser, xN, edm, 3, solver=make_solver(name, denoiser, edm, noise_fn=noise_fn))
    torch.testing.assert_close(a, sample(denoiser, xN, edm, 3, solver=name), rtol=0, atol=0)


def test_generator_and_noise_fn_together_are_refused():
    with pytest.raises(ValueError, match="not both"):
        SOLVERS["edm_stochastic_heun"](
            lambda x, t: x, generator=torch.Generator(), noise_fn=torch.randn_like
        )


def test_norm_fn_steers_the_adaptive_solver_and_only_it():
    edm, denoiser, xN = denoiser_and_start()
    seen = []

    def loose(y):  # a norm 100x smaller: fewer, longer steps
        seen.append(y.shape)
        return 0.01 * y.square().flatten(1).mean(1).sqrt().max().item()

    plain = make_solver("adaptive", denoiser, edm)
    steered = make_solver("adaptive", denoiser, edm, norm_fn=loose)
    assert isinstance(steered, AdaptiveSolver) and steered.norm_fn is loose
    sample(denoiser, xN, edm, 3, solver=plain)
    sample(denoiser, xN, edm, 3, solver=steered)
    assert seen and steered.nfe < plain.nfe
    heun = make_solver("heun", denoiser, edm, norm_fn=loose)  # measures no norm: not passed
    assert not hasattr(heun, "norm_fn")


def test_seams_are_for_named_solvers():
    edm, denoiser, _ = denoiser_and_start()
    with pytest.raises(ValueError, match="named solver"):
        make_solver(SOLVERS["euler"](denoiser), denoiser, edm, noise_fn=torch.randn_like)
