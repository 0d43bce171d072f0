"""Contract every shipped noise scheduler satisfies (diffusers' SchedulerCommonTest idea):
protocol, shapes/dtypes/devices, monotone steps, invertible sigma, exact derivatives,
prediction round trips, and the reverse ODE/SDE rhs on Gaussian data whose exact denoiser is
known in closed form."""

import math

import pytest
import torch

from hpcdiff.diffusion import Denoiser
from hpcdiff.diffusion.noise_schedulers import (
    EDMLogUniformNoiseScheduler,
    EDMNoiseScheduler,
    IDDPMNoiseScheduler,
    LinearGaussianNoiseScheduler,
    NoiseScheduler,
    RectifiedFlowNoiseScheduler,
    StudentTEDMNoiseScheduler,
    VENoiseScheduler,
    VPNoiseScheduler,
)

SCHEDULERS = {
    "edm": EDMNoiseScheduler,
    "edm_per_channel": lambda: EDMNoiseScheduler(sigma_data=torch.tensor([0.3, 0.5, 0.7])),
    "edm_log_uniform": EDMLogUniformNoiseScheduler,
    "ve": VENoiseScheduler,
    "vp": VPNoiseScheduler,
    "vp_custom": lambda: VPNoiseScheduler(beta_min=0.5, beta_d=10.0, epsilon_s=0.01, t_max=0.9),
    "iddpm": lambda: IDDPMNoiseScheduler(M=200),
    "student_t": lambda: StudentTEDMNoiseScheduler(nu=5),
    "rectified_flow": RectifiedFlowNoiseScheduler,
    "rectified_flow_logit_shift": lambda: RectifiedFlowNoiseScheduler(
        t_min=1e-3, time_distribution="logit_normal", shift=3.0
    ),
}
F64 = torch.float64


@pytest.fixture(params=list(SCHEDULERS), ids=list(SCHEDULERS))
def scheduler(request):
    return SCHEDULERS[request.param]()


def _times(s, n=6, dtype=F64):
    """n times inside the schedule's sampling range, largest first."""
    return s.timesteps(n, dtype=dtype)[:-1]


def test_is_a_noise_scheduler(scheduler):
    assert isinstance(scheduler, NoiseScheduler)
    assert isinstance(scheduler, LinearGaussianNoiseScheduler)


@pytest.mark.parametrize("dtype", [None, torch.float32, torch.float64])
def test_timesteps_shape_dtype_and_order(scheduler, dtype):
    steps = scheduler.timesteps(12, dtype=dtype)
    assert steps.shape == (13,) and steps.dtype == (dtype or torch.get_default_dtype())
    assert steps[-1] == 0 and bool((steps.diff() < 0).all())
    assert scheduler.sample_time(7, dtype=dtype).dtype == (dtype or torch.get_default_dtype())


def test_methods_follow_the_requested_device(scheduler):
    # "meta" tensors carry device and shape without data: checks device plumbing on CPU CI.
    meta = torch.device("meta")
    tN = torch.ones(3, device=meta)
    outs = [
        scheduler.timesteps(4, device=meta),
        scheduler.sample_time(4, device=meta),
        scheduler.init_latents((3, 2, 2), tN),
        scheduler.add_noise(torch.ones(3, 3, 2, 2, device=meta), tN),
        scheduler.loss_weight(tN),
        scheduler.get_denoiser(x0_predictor=lambda x, t: x)(torch.ones(3, 3, device=meta), tN),
    ]
    assert all(o.device == meta for o in outs)


def test_training_methods_shapes(scheduler):
    torch.manual_seed(0)
    t = scheduler.sample_time(5)
    assert t.shape == (5,) and bool((t > 0).all())
    x0 = torch.randn(5, 3, 4, 4)
    assert scheduler.add_noise(x0, t).shape == x0.shape
    w = scheduler.loss_weight(t)
    per_channel = scheduler.sigma_data.ndim == 1 if hasattr(scheduler, "sigma_data") else False
    assert w.shape == ((5, 3) if per_channel else (5,)) and bool((w > 0).all())


def test_add_noise_is_alpha_x0_plus_sigma_noise(scheduler):
    t = _times(scheduler, 3)[1:2].expand(4000)  # one mid-range time, many samples
    x0 = torch.full((4000, 8), 0.7, dtype=F64)
    torch.manual_seed(1)
    x_t = scheduler.add_noise(x0, t)
    noise = (x_t - scheduler.alpha(t)[0] * x0) / scheduler.sigma(t)[0]
    var = scheduler.nu / (scheduler.nu - 2) if hasattr(scheduler, "nu") else 1.0
    assert abs(noise.mean().item()) < 5 * math.sqrt(var / 4000)
    assert abs(noise.var().item() / var - 1) < 0.1
    torch.testing.assert_close(scheduler.add_noise(x0[:2], torch.zeros(2, dtype=F64)), x0[:2])


def test_init_latents_scale_is_sigma_tN(scheduler):
    tN = scheduler.timesteps(5, dtype=F64)[0].expand(2000)
    torch.manual_seed(2)
    xN = scheduler.init_latents((4, 4), tN, dtype=F64)
    assert xN.shape == (2000, 4, 4) and xN.dtype == F64
    var = scheduler.nu / (scheduler.nu - 2) if hasattr(scheduler, "nu") else 1.0
    ratio = xN.var().item() / (scheduler.sigma(tN[0]).item() ** 2 * var)
    assert abs(ratio - 1) < 0.1
    assert scheduler.init_latents((3,), torch.ones(2)).dtype == torch.get_default_dtype()


def test_sigma_inv_inverts_sigma(scheduler):
    t = _times(scheduler, 8)
    err = (scheduler.sigma_inv(scheduler.sigma(t)) - t).abs()
    bound = torch.full_like(t, 1e-7) + 1e-6 * t
    if isinstance(scheduler, VPNoiseScheduler):
        # VP keeps the reference's guard ln(1 - sigma^2 + 1e-8): t moves by about
        # 1e-8 / (alpha^2 beta), visible only where alpha is tiny (t near t_max).
        beta = scheduler.beta_min + scheduler.beta_d * t
        bound += 1.1e-8 / (scheduler.alpha(t) ** 2 * beta)
    assert bool((err <= bound).all()), (err, bound)


def test_derivatives_match_autograd(scheduler):
    t = _times(scheduler, 8).clone().requires_grad_(True)
    for f, f_dot in (
        (scheduler.sigma, scheduler.sigma_dot),
        (scheduler.alpha, scheduler.alpha_dot),
    ):
        out = f(t)  # a constant (alpha = 1) carries no graph: its derivative is 0
        grad = torch.autograd.grad(out.sum(), t)[0] if out.requires_grad else torch.zeros_like(t)
        torch.testing.assert_close(f_dot(t.detach()), grad)


def test_prediction_conversions_round_trip(scheduler):
    torch.manual_seed(3)
    t = _times(scheduler, 4)
    x_t, x0 = torch.randn(4, 3, 5, dtype=F64), torch.randn(4, 3, 5, dtype=F64)
    s = scheduler
    score = s.x0_to_score(x0, x_t, t)
    torch.testing.assert_close(s.score_to_x0(score, x_t, t), x0)
    eps = s.x0_to_epsilon(x0, x_t, t)
    torch.testing.assert_close(s.epsilon_to_x0(eps, x_t, t), x0)
    torch.testing.assert_close(s.score_to_epsilon(score, t), eps)
    torch.testing.assert_close(s.epsilon_to_score(eps, t), score)
    # Consistent with the forward process: x_t = alpha x0 + sigma eps.
    tb = t.view(-1, 1, 1)
    torch.testing.assert_close(s.alpha(tb) * x0 + s.sigma(tb) * eps, x_t)
    # Velocity v = alpha' x0 + sigma' eps, reached from and mapped back to every other form.
    v = s.x0_to_velocity(x0, x_t, t)
    torch.testing.assert_close(v, s.alpha_dot(tb) * x0 + s.sigma_dot(tb) * eps)
    torch.testing.assert_close(s.velocity_to_x0(v, x_t, t), x0)
    torch.testing.assert_close(s.epsilon_to_velocity(eps, x_t, t), v)
    torch.testing.assert_close(s.velocity_to_epsilon(v, x_t, t), eps)
    torch.testing.assert_close(s.score_to_velocity(score, x_t, t), v)
    torch.testing.assert_close(s.velocity_to_score(v, x_t, t), score)


def _gaussian_posteriors(s, mu, std):
    """Exact x0 / score / epsilon predictors for data N(mu, std^2) under x_t = a x0 + sigma eps.

    x_t ~ N(a mu, v), v = a^2 std^2 + sigma^2; E[x0 | x_t] = mu + a std^2 (x_t - a mu) / v.
    """

    def parts(x, t):
        tb = t.view(-1, *([1] * (x.ndim - 1)))
        a, sig = s.alpha(tb), s.sigma(tb)
        v = a**2 * std**2 + sig**2
        return a, sig, v, x - a * mu

    def x0(x, t):
        a, _, v, r = parts(x, t)
        return mu + a * std**2 * r / v

    def score(x, t):
        _, _, v, r = parts(x, t)
        return -r / v

    def eps(x, t):
        _, sig, v, r = parts(x, t)
        return sig * r / v

    def velocity(x, t):
        tb = t.view(-1, *([1] * (x.ndim - 1)))
        return s.alpha_dot(tb) * x0(x, t) + s.sigma_dot(tb) * eps(x, t)

    return x0, score, eps, velocity


@pytest.mark.parametrize("denoising_type", ["ode", "sde"])
def test_denoisers_from_the_four_predictors_agree_on_gaussian_data(scheduler, denoising_type):
    x0_p, score_p, eps_p, v_p = _gaussian_posteriors(scheduler, mu=0.4, std=1.7)
    t = _times(scheduler, 5)
    x = torch.randn(5, 2, 3, dtype=F64)
    outs = [
        scheduler.get_denoiser(**{k: p}, denoising_type=denoising_type)(x, t)
        for k, p in (
            ("x0_predictor", x0_p),
            ("score_predictor", score_p),
            ("epsilon_predictor", eps_p),
            ("velocity_predictor", v_p),
        )
    ]
    assert all(isinstance(scheduler.get_denoiser(x0_predictor=x0_p), Denoiser) for _ in "x")
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0])


def test_ode_rhs_transports_the_gaussian_marginals(scheduler):
    """Probability flow of N(mu, std^2) data: x_t = a mu + sqrt(v) z, so the exact rhs is
    a' mu + v' / (2 v) (x - a mu) with v = a^2 std^2 + sigma^2 (Song et al. 2021, eq. 13)."""
    mu, std = 0.4, 1.7
    x0_p, _, _, _ = _gaussian_posteriors(scheduler, mu, std)
    t = _times(scheduler, 5)
    x = torch.randn(5, 2, 3, dtype=F64)
    tb = t.view(-1, 1, 1)
    a, a_dot = scheduler.alpha(tb), scheduler.alpha_dot(tb)
    sig, sig_dot = scheduler.sigma(tb), scheduler.sigma_dot(tb)
    v = a**2 * std**2 + sig**2
    v_dot = 2 * a * a_dot * std**2 + 2 * sig * sig_dot
    expected = a_dot * mu + v_dot / (2 * v) * (x - a * mu)
    torch.testing.assert_close(scheduler.get_denoiser(x0_predictor=x0_p)(x, t), expected)


def test_sde_rhs_is_twice_ode_rhs_minus_drift(scheduler):
    x0_p, _, _, _ = _gaussian_posteriors(scheduler, mu=-0.3, std=0.8)
    t = _times(scheduler, 4)
    x = torch.randn(4, 6, dtype=F64)
    ode = scheduler.get_denoiser(x0_predictor=x0_p)(x, t)
    sde = scheduler.get_denoiser(x0_predictor=x0_p, denoising_type="sde")(x, t)
    torch.testing.assert_close(sde, 2 * ode - scheduler.drift(x, t))


@pytest.mark.parametrize("make", [EDMNoiseScheduler, VPNoiseScheduler], ids=["edm", "vp"])
def test_denoiser_and_add_noise_compile_fullgraph(make):
    torch._dynamo.reset()
    s = make()
    t = torch.tensor([0.3, 0.9])
    x = torch.randn(2, 3, 4, 4)
    denoiser = s.get_denoiser(x0_predictor=lambda x_, t_: 0.5 * x_ + t_.view(-1, 1, 1, 1))
    torch.testing.assert_close(torch.compile(denoiser, fullgraph=True)(x, t), denoiser(x, t))
    torch.manual_seed(4)
    noisy = torch.compile(s.add_noise, fullgraph=True)(x, t)
    assert noisy.shape == x.shape and bool(torch.isfinite(noisy).all())
