"""sample() on Gaussian data N(mu, s^2), where the x0-predictor and the ODE flow are exact.

With x_t = alpha x0 + sigma eps and x0 ~ N(mu, s^2) per channel, x_t ~ N(alpha mu, v) with
v = alpha^2 s^2 + sigma^2, the posterior mean is
    x0_hat(x, t) = mu + s^2 alpha / v (x - alpha mu),
and the probability-flow ODE keeps z = (x_t - alpha mu) / sqrt(v) fixed along each path:
x(t) = alpha(t) mu + sqrt(v(t)) z. Sampling starts from that exact marginal at t_N (not from
init_latents, whose N(0, sigma^2) omits the alpha mu and alpha^2 s^2 parts), so the only errors
left are the solver's.
"""

import math

import pytest
import torch

from hpcdiff.diffusion.noise_schedulers import (
    EDMNoiseScheduler,
    VENoiseScheduler,
    VPNoiseScheduler,
)
from hpcdiff.diffusion.samplers import sample

MU = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64).view(3, 1, 1)  # (C, 1, 1)
S = torch.tensor([0.5, 1.0, 0.2], dtype=torch.float64).view(3, 1, 1)

SCHEDULERS = {"edm": EDMNoiseScheduler, "ve": VENoiseScheduler, "vp": VPNoiseScheduler}


def coefficients(sch, t):
    t_bc = t.view(-1, 1, 1, 1)  # (B, 1, 1, 1)
    alpha, sigma = sch.alpha(t_bc), sch.sigma(t_bc)
    return alpha, alpha**2 * S**2 + sigma**2


def exact_x0_predictor(sch):
    def x0_hat(x, t):
        alpha, v = coefficients(sch, t)
        return MU + S**2 * alpha / v * (x - alpha * MU)

    return x0_hat


def on_path(sch, t, z):
    """x(t) = alpha mu + sqrt(v) z: the exact ODE solution through standardized z."""
    alpha, v = coefficients(sch, t.expand(z.shape[0]))
    return alpha * MU + v.sqrt() * z


def z_draw(batch, seed=0):
    return torch.randn(batch, 3, 4, 4, generator=torch.Generator().manual_seed(seed)).double()


# Steps for a discretization bias well under the sampling error of 4096 samples per channel.
STEPS = {"euler": 1024, "heun": 128, "dpm++2m": 128}


@pytest.mark.parametrize("solver", sorted(STEPS))
@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_samples_have_data_mean_and_std(name, solver):
    sch = SCHEDULERS[name]()
    num_steps = STEPS[solver]
    z = z_draw(256)
    t_N = sch.timesteps(num_steps, dtype=torch.float64)[0]
    denoiser = sch.get_denoiser(x0_predictor=exact_x0_predictor(sch))
    out = sample(denoiser, on_path(sch, t_N, z), sch, num_steps, solver=solver)
    n = out.numel() // 3  # samples per channel
    mean, std = out.mean(dim=(0, 2, 3)), out.std(dim=(0, 2, 3))
    s = S.flatten()
    assert torch.all((mean - MU.flatten()).abs() < 4 * s / math.sqrt(n)), mean
    assert torch.all((std - s).abs() < 4 * s / math.sqrt(2 * n)), std


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_dpm_x0_mode_equals_ode_mode(name):
    sch = SCHEDULERS[name]()
    z, x0_hat = z_draw(4), exact_x0_predictor(sch)
    xN = on_path(sch, sch.timesteps(12, dtype=torch.float64)[0], z)
    ode = sample(sch.get_denoiser(x0_predictor=x0_hat), xN, sch, 12, solver="dpmpp_2m")
    x0 = sample(x0_hat, xN, sch, 12, solver="dpmpp_2m", solver_options={"denoiser_type": "x0"})
    torch.testing.assert_close(ode, x0, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(("solver", "order"), [("euler", 1), ("heun", 2), ("dpm++2m", 2)])
@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_ode_error_falls_at_solver_order(name, solver, order):
    # Grid t_N .. t_1 of the scheduler (dropping the final jump to 0, where the rhs is
    # singular); error against the closed-form path at t_1. Halving the step must divide it by
    # 2^order.
    sch = SCHEDULERS[name]()
    z = z_draw(8)
    denoiser = sch.get_denoiser(x0_predictor=exact_x0_predictor(sch))
    errors = []
    for num_steps in (128, 256):
        grid = sch.timesteps(num_steps, dtype=torch.float64)[:-1]
        out = sample(denoiser, on_path(sch, grid[0], z), sch, 0, solver=solver, time_steps=grid)
        errors.append((out - on_path(sch, grid[-1], z)).abs().max().item())
    slope = math.log2(errors[0] / errors[1])
    assert order - 0.15 < slope < order + 0.25, (errors, slope)


def test_stochastic_heun_with_churn_keeps_edm_marginals():
    # EDM churn adds exactly the forward-process noise from t to t_hat, so the samples keep
    # the data distribution (up to sampling and discretization error).
    sch = EDMNoiseScheduler()
    z = z_draw(256)
    t_N = sch.timesteps(64, dtype=torch.float64)[0]
    denoiser = sch.get_denoiser(x0_predictor=exact_x0_predictor(sch))
    options = {"S_churn": 40.0, "num_steps": 64, "generator": torch.Generator().manual_seed(1)}
    out = sample(
        denoiser, on_path(sch, t_N, z), sch, 64, solver="edm_stochastic_heun",
        solver_options=options,
    )  # fmt: skip
    n = out.numel() // 3
    s = S.flatten()
    assert not torch.allclose(out, MU + S * z)  # churn changed the paths...
    assert torch.all((out.mean(dim=(0, 2, 3)) - MU.flatten()).abs() < 4 * s / math.sqrt(n))
    assert torch.all((out.std(dim=(0, 2, 3)) - s).abs() < 4 * s / math.sqrt(2 * n))
