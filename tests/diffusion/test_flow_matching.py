"""Rectified flow / flow matching: schedule closed forms, velocity rhs, preconditioner, velocity
loss, and the ODE transporting N(0, I) to Gaussian data N(mu, s^2) with the exact predictor.

With x_t = (1 - t) x0 + t eps and x0 ~ N(mu, s^2): x_t ~ N((1 - t) mu, v), v = (1 - t)^2 s^2 + t^2,
x0_hat = mu + (1 - t) s^2 / v (x - (1 - t) mu), and the ODE keeps z = (x - (1 - t) mu) / sqrt(v)
fixed, so x(t) = (1 - t) mu + sqrt(v(t)) z (x(1) = z ~ N(0, I), x(0) = mu + s z).
"""

import math

import pytest
import torch

from hpcdiff.diffusion.metrics import MSEDSMLoss, WeightedMSEDSMLoss
from hpcdiff.diffusion.noise_schedulers import (
    FlowMatchingNoiseScheduler,
    LinearGaussianNoiseScheduler,
    RectifiedFlowNoiseScheduler,
)
from hpcdiff.diffusion.preconditioners import FlowMatchingPreconditioner
from hpcdiff.diffusion.samplers import sample

F64 = torch.float64
MU = torch.tensor([1.0, -0.5, 2.0], dtype=F64).view(3, 1, 1)  # (C, 1, 1)
S = torch.tensor([0.5, 1.0, 0.2], dtype=F64).view(3, 1, 1)


def bc(t, x):
    return t.view(-1, *([1] * (x.ndim - 1)))


def exact_x0(x, t):
    tb = bc(t, x)
    v = (1 - tb) ** 2 * S**2 + tb**2
    return MU + (1 - tb) * S**2 / v * (x - (1 - tb) * MU)


def exact_velocity(x, t):
    """E[eps - x0 | x_t] = (x - x0_hat) / t; at t = 1 (x = eps) it is x - mu."""
    return (x - exact_x0(x, t)) / bc(t, x)


def on_path(t, z):
    tb = bc(t.expand(z.shape[0]), z)
    return (1 - tb) * MU + ((1 - tb) ** 2 * S**2 + tb**2).sqrt() * z


def z_draw(batch, seed=0):
    return torch.randn(batch, 3, 4, 4, generator=torch.Generator().manual_seed(seed), dtype=F64)


# Schedule ------------------------------------------------------------------------------------


def test_path_coefficients_and_velocity_is_eps_minus_x0():
    rf = RectifiedFlowNoiseScheduler()
    t = torch.tensor([0.1, 0.5, 0.9], dtype=F64)
    torch.testing.assert_close(rf.alpha(t), 1 - t)
    torch.testing.assert_close(rf.sigma(t), t)
    torch.testing.assert_close(rf.alpha_dot(t), -torch.ones_like(t))
    torch.testing.assert_close(rf.snr(t), ((1 - t) / t) ** 2)
    x0, eps = torch.randn(3, 5, dtype=F64), torch.randn(3, 5, dtype=F64)
    x_t = (1 - bc(t, x0)) * x0 + bc(t, x0) * eps
    v = rf.x0_to_velocity(x0, x_t, t)
    torch.testing.assert_close(v, eps - x0)
    torch.testing.assert_close(rf.velocity_to_x0(v, x_t, t), x_t - bc(t, x0) * v)
    torch.testing.assert_close(rf.velocity_to_epsilon(v, x_t, t), eps)


@pytest.mark.parametrize(("t_max", "shift", "n"), [(0.99, 1.0, 4), (1.0, 3.0, 5), (0.9, 0.5, 3)])
def test_timesteps_are_uniform_in_the_shifted_time(t_max, shift, n):
    steps = RectifiedFlowNoiseScheduler(t_max=t_max, shift=shift).timesteps(n, dtype=F64)
    assert steps.shape == (n + 1,) and steps[0].item() == pytest.approx(t_max) and steps[-1] == 0
    u = steps / (shift - (shift - 1) * steps)  # inverse of t = shift u / (1 + (shift - 1) u)
    torch.testing.assert_close(u.diff(), torch.full((n,), -u[0].item() / n, dtype=F64))


def test_uniform_and_logit_normal_training_times():
    torch.manual_seed(0)
    t = RectifiedFlowNoiseScheduler(t_min=0.1, t_max=0.9).sample_time(20000, dtype=F64)
    assert 0.1 <= t.min() and t.max() <= 0.9 and abs(t.mean().item() - 0.5) < 0.01
    rf = RectifiedFlowNoiseScheduler(
        t_max=1.0, time_distribution="logit_normal", logit_mean=0.5, logit_std=0.8
    )
    logit = torch.logit(rf.sample_time(20000, dtype=F64))
    assert abs(logit.mean().item() - 0.5) < 0.03 and abs(logit.std().item() - 0.8) < 0.03


def test_loss_weight_is_inverse_t_squared_and_zero_at_t_zero():
    w = RectifiedFlowNoiseScheduler().loss_weight(torch.tensor([0.0, 0.25, 0.5]))
    torch.testing.assert_close(w, torch.tensor([0.0, 16.0, 4.0]))


@pytest.mark.parametrize(
    "make",
    [
        lambda: RectifiedFlowNoiseScheduler(t_min=0.5, t_max=0.5),
        lambda: RectifiedFlowNoiseScheduler(t_max=1.5),
        lambda: RectifiedFlowNoiseScheduler(time_distribution="beta"),
        lambda: RectifiedFlowNoiseScheduler(logit_std=0.0),
        lambda: RectifiedFlowNoiseScheduler(shift=0.0),
        lambda: RectifiedFlowNoiseScheduler().timesteps(0),
        lambda: FlowMatchingNoiseScheduler().get_denoiser(x0_predictor=abs, denoising_type="sde"),
        lambda: RectifiedFlowNoiseScheduler().get_denoiser(
            x0_predictor=abs, velocity_predictor=abs
        ),
    ],
)
def test_invalid_settings_raise_value_error(make):
    with pytest.raises(ValueError):
        make()


# Reverse process -----------------------------------------------------------------------------


def test_ode_rhs_closed_forms_match_the_generic_linear_gaussian_rhs():
    rf = RectifiedFlowNoiseScheduler()
    t = torch.tensor([0.05, 0.5, 0.95], dtype=F64)
    x = torch.randn(3, 3, 4, 4, dtype=F64)
    eps_p = lambda x_, t_: (x_ - (1 - bc(t_, x_)) * exact_x0(x_, t_)) / bc(t_, x_)  # noqa: E731
    score_p = lambda x_, t_: -eps_p(x_, t_) / bc(t_, x_)  # noqa: E731
    for kind, p in (("x0", exact_x0), ("epsilon", eps_p), ("score", score_p)):
        closed = rf.get_denoiser(**{f"{kind}_predictor": p})(x, t)
        generic = LinearGaussianNoiseScheduler.get_denoiser(rf, **{f"{kind}_predictor": p})(x, t)
        torch.testing.assert_close(closed, generic)
        torch.testing.assert_close(closed, exact_velocity(x, t))
    assert rf.get_denoiser(velocity_predictor=exact_velocity) is exact_velocity


def test_velocity_and_x0_rhs_are_regular_at_pure_noise():
    fm = FlowMatchingNoiseScheduler()
    x, t = torch.randn(2, 3, 4, 4, dtype=F64), torch.ones(2, dtype=F64)
    rhs = fm.get_denoiser(x0_predictor=exact_x0)(x, t)
    torch.testing.assert_close(rhs, x - MU.expand_as(x))


def test_sde_rhs_from_velocity_is_twice_ode_minus_drift():
    rf = RectifiedFlowNoiseScheduler()
    t = torch.tensor([0.2, 0.7], dtype=F64)
    x = torch.randn(2, 3, 4, 4, dtype=F64)
    sde = rf.get_denoiser(velocity_predictor=exact_velocity, denoising_type="sde")(x, t)
    torch.testing.assert_close(sde, 2 * exact_velocity(x, t) - rf.drift(x, t))
    from_x0 = rf.get_denoiser(x0_predictor=exact_x0, denoising_type="sde")(x, t)
    torch.testing.assert_close(sde, from_x0)


@pytest.mark.parametrize("solver", ["heun", "exponential_euler", "dpm++2m", "dpmpp_2m_unic"])
def test_ode_transports_standard_normal_to_the_data_gaussian(solver):
    # From pure noise at t = 1 (flow matching path) with the exact velocity; every solver
    # converges to x(0) = mu + s z along the path through z (first order: more steps).
    fm = FlowMatchingNoiseScheduler()
    torch.manual_seed(0)
    z = fm.init_latents((3, 4, 4), torch.ones(512, dtype=F64), dtype=F64)  # x(1) = z ~ N(0, I)
    denoiser = fm.get_denoiser(velocity_predictor=exact_velocity)
    out = sample(denoiser, z, fm, 1024 if solver == "exponential_euler" else 64, solver=solver)
    torch.testing.assert_close(out, MU + S * z, rtol=0, atol=0.02)
    n = out.numel() // 3
    s = S.flatten()
    assert torch.all((out.mean(dim=(0, 2, 3)) - MU.flatten()).abs() < 4 * s / math.sqrt(n))
    assert torch.all((out.std(dim=(0, 2, 3)) / s - 1).abs() < 4 / math.sqrt(2 * n))


@pytest.mark.parametrize(
    ("solver", "order"),
    [("exponential_euler", 1), ("heun", 2), ("dpm++2m", 2), ("dpmpp_2m_unic", 3)],
)
def test_convergence_order_on_the_rectified_flow_gaussian(solver, order):
    # Uniform grids on [0.99, 0.05] (away from the singular endpoint 0): halving the step
    # divides the error against the closed-form path by 2^order.
    rf = RectifiedFlowNoiseScheduler()
    z = z_draw(8)
    denoiser = rf.get_denoiser(velocity_predictor=exact_velocity)
    errors = []
    for n in (48, 96):
        grid = torch.linspace(0.99, 0.05, n + 1, dtype=F64)
        out = sample(denoiser, on_path(grid[0], z), rf, 0, solver=solver, time_steps=grid)
        errors.append((out - on_path(grid[-1], z)).abs().max().item())
    slope = math.log2(errors[0] / errors[1])
    assert order - 0.2 < slope < order + 0.3, (errors, slope)


# Preconditioner and loss ---------------------------------------------------------------------


@pytest.mark.parametrize("sd", [1.0, 0.5])
def test_preconditioner_gives_unit_variance_input_and_target(sd):
    t = torch.tensor([0.1, 0.5, 0.9], dtype=F64).view(-1, 1)
    p = FlowMatchingPreconditioner(lambda x, t_, condition=None: x, sigma_data=sd)
    c_in, c_noise, c_out, c_skip = p.compute_coefficients(t)
    torch.testing.assert_close(c_in**2 * ((1 - t) ** 2 * sd**2 + t**2), torch.ones_like(t))

    def target_var(c):  # Var(v - c x_t), v = eps - x0, x_t = (1 - t) x0 + t eps
        return sd**2 * (1 + c * (1 - t)) ** 2 + (1 - c * t) ** 2

    torch.testing.assert_close(target_var(c_skip), c_out**2)  # F's target has unit variance
    assert bool((target_var(c_skip + 1e-3) > c_out**2).all())  # ... and c_skip minimizes it
    assert bool((target_var(c_skip - 1e-3) > c_out**2).all())
    torch.testing.assert_close(c_noise, torch.logit(t) / 4)


def test_preconditioner_per_channel_and_velocity_output():
    seen = {}

    def net(x, t, condition=None):
        seen["x"], seen["t"] = x, t
        return torch.ones_like(x)

    p = FlowMatchingPreconditioner(net, sigma_data=[0.5, 1.0])
    x, t = torch.ones(2, 2, 3), torch.tensor([0.5, 0.25])
    out = p(x, t)
    sd = torch.tensor([0.5, 1.0]).view(1, 2, 1)
    tb = t.view(-1, 1, 1)
    D = (1 - tb) ** 2 * sd**2 + tb**2
    torch.testing.assert_close(out, (tb - (1 - tb) * sd**2) / D * x + sd / D.sqrt())
    torch.testing.assert_close(seen["x"], x / D.sqrt())
    torch.testing.assert_close(seen["t"], torch.logit(t) / 4)
    with pytest.raises(ValueError, match="channels"):
        p(torch.ones(2, 3, 3), t)


@pytest.mark.parametrize("cls", [MSEDSMLoss, WeightedMSEDSMLoss])
def test_velocity_loss_is_the_flow_matching_loss(cls):
    rf = RectifiedFlowNoiseScheduler(t_min=0.05)
    model = lambda x, t, condition=None: 0.3 * x - bc(t, x)  # noqa: E731
    loss_fn = cls(
        model, rf, prediction_type="velocity", velocity_to_x0_fn=rf.velocity_to_x0,
        reduction="none",
    )  # fmt: skip
    x0, t = torch.randn(4, 3, 5, dtype=F64), torch.tensor([0.1, 0.4, 0.7, 0.95], dtype=F64)
    extra = {"weight": torch.ones_like(x0)} if cls is WeightedMSEDSMLoss else {}
    torch.manual_seed(7)
    loss = loss_fn(x0, t=t, **extra)
    torch.manual_seed(7)
    x_t = rf.add_noise(x0, t)
    eps = (x_t - (1 - bc(t, x0)) * x0) / bc(t, x0)
    torch.testing.assert_close(loss, (model(x_t, t) - (eps - x0)) ** 2)
    with pytest.raises(ValueError, match="velocity_to_x0_fn must be provided"):
        cls(model, rf, prediction_type="velocity")
