"""Closed-form checks of each noise schedule: sigma/alpha, discretizations, training-time
distributions, loss weights and the reverse-process rhs (Karras et al. 2022 Table 1; Song et
al. 2021; Nichol & Dhariwal 2021)."""

import math

import pytest
import torch

from hpcdiff.diffusion.noise_schedulers import (
    EDMLogUniformNoiseScheduler,
    EDMNoiseScheduler,
    IDDPMNoiseScheduler,
    LinearGaussianNoiseScheduler,
    StudentTEDMNoiseScheduler,
    VENoiseScheduler,
    VPNoiseScheduler,
)

F64 = dict(dtype=torch.float64)


def _within(sample_stat, expected, std_err, k=5.0):
    """A sample statistic agrees with its expectation within k standard errors."""
    assert abs(sample_stat - expected) < k * std_err, (sample_stat, expected, std_err)


# EDM ------------------------------------------------------------------------------------------


def test_edm_sigma_is_time_and_alpha_is_one():
    s = EDMNoiseScheduler()
    t = torch.tensor([0.002, 0.3, 1.0, 80.0])
    assert torch.equal(s.sigma(t), t) and torch.equal(s.sigma_inv(t), t)
    assert torch.equal(s.sigma_dot(t), torch.ones(4)) and torch.equal(s.alpha(t), torch.ones(4))
    assert torch.equal(s.alpha_dot(t), torch.zeros(4))


@pytest.mark.parametrize("sigma_min,sigma_max,rho,n", [(0.002, 80.0, 7.0, 18), (0.1, 5.0, 3.0, 4)])
def test_edm_timesteps_follow_rho_formula_with_endpoints(sigma_min, sigma_max, rho, n):
    steps = EDMNoiseScheduler(sigma_min, sigma_max, rho).timesteps(n, **F64)
    i = torch.arange(n, **F64)
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    expected = (a + i / (n - 1) * (b - a)) ** rho
    assert steps.shape == (n + 1,)
    torch.testing.assert_close(steps[:-1], expected)
    torch.testing.assert_close(steps[[0, n - 1]], torch.tensor([sigma_max, sigma_min], **F64))
    assert steps[-1] == 0 and bool((steps.diff() < 0).all())


def test_edm_sample_time_is_log_normal_with_p_mean_p_std():
    s = EDMNoiseScheduler(P_mean=-0.4, P_std=0.8)
    torch.manual_seed(0)
    log_t = s.sample_time(20000, **F64).log()
    _within(log_t.mean().item(), -0.4, 0.8 / math.sqrt(20000))
    _within(log_t.std().item(), 0.8, 0.8 / math.sqrt(2 * 20000))


def test_edm_loss_weight_scalar_and_per_channel():
    t = torch.tensor([0.1, 0.5, 2.0])
    w = EDMNoiseScheduler(sigma_data=0.5).loss_weight(t)
    torch.testing.assert_close(w, (t**2 + 0.25) / (0.5 * t) ** 2)
    # lambda(sigma_data) = 2 / sigma_data^2: c_out(sigma_data)^-2 of EDM's preconditioning.
    torch.testing.assert_close(w[1], torch.tensor(8.0))
    sd = torch.tensor([0.3, 0.5, 0.7])
    w_c = EDMNoiseScheduler(sigma_data=sd).loss_weight(t)
    assert w_c.shape == (3, 3)
    for c in range(3):
        torch.testing.assert_close(
            w_c[:, c], EDMNoiseScheduler(sigma_data=sd[c].item()).loss_weight(t)
        )


def test_edm_log_uniform_sample_time_moments_and_range():
    s = EDMLogUniformNoiseScheduler(sigma_min=0.01, sigma_max=20.0)
    torch.manual_seed(1)
    log_t = s.sample_time(20000, **F64).log()
    lo, hi = math.log(0.01), math.log(20.0)
    assert bool((log_t >= lo).all() and (log_t <= hi).all())
    _within(log_t.mean().item(), (lo + hi) / 2, (hi - lo) / math.sqrt(12 * 20000))
    _within(log_t.var().item(), (hi - lo) ** 2 / 12, (hi - lo) ** 2 / math.sqrt(180 * 20000))
    # Everything else is EDM's.
    assert isinstance(s, EDMNoiseScheduler)
    torch.testing.assert_close(s.timesteps(6), EDMNoiseScheduler(0.01, 20.0).timesteps(6))


# VE -------------------------------------------------------------------------------------------


def test_ve_closed_forms_and_geometric_steps():
    s = VENoiseScheduler(sigma_min=0.02, sigma_max=100.0)
    t = torch.tensor([1e-4, 0.25, 4.0, 1e4], **F64)
    torch.testing.assert_close(s.sigma(t), t.sqrt())
    torch.testing.assert_close(s.diffusion(torch.zeros(4, 2, **F64), t), torch.ones(4, 1, **F64))
    steps = s.timesteps(7, **F64)
    torch.testing.assert_close(steps[[0, 6]], torch.tensor([100.0**2, 0.02**2], **F64))
    ratios = steps[1:-1] / steps[:-2]
    torch.testing.assert_close(ratios, torch.full_like(ratios, (0.02 / 100.0) ** (2 / 6)))
    assert steps[-1] == 0
    torch.testing.assert_close(s.loss_weight(t), 1 / t)


def test_ve_sample_time_is_log_uniform_in_sigma():
    s = VENoiseScheduler(sigma_min=0.02, sigma_max=100.0)
    torch.manual_seed(2)
    log_sigma = s.sample_time(20000, **F64).sqrt().log()
    lo, hi = math.log(0.02), math.log(100.0)
    assert bool((log_sigma >= lo - 1e-12).all() and (log_sigma <= hi + 1e-12).all())
    _within(log_sigma.mean().item(), (lo + hi) / 2, (hi - lo) / math.sqrt(12 * 20000))


# VP -------------------------------------------------------------------------------------------


def test_vp_alpha_sigma_drift_and_diffusion_closed_forms():
    s = VPNoiseScheduler(beta_min=0.1, beta_d=19.1)
    t = torch.tensor([1e-3, 0.1, 0.5, 1.0], **F64)
    beta = 0.1 + 19.1 * t
    log_alpha = -0.5 * (0.5 * 19.1 * t**2 + 0.1 * t)  # -1/2 int_0^t beta
    torch.testing.assert_close(s.alpha(t), log_alpha.exp())
    torch.testing.assert_close(s.alpha(t) ** 2 + s.sigma(t) ** 2, torch.ones(4, **F64))
    x = torch.randn(4, 3, 2, **F64)
    torch.testing.assert_close(s.drift(x, t), -0.5 * beta.view(-1, 1, 1) * x)
    torch.testing.assert_close(s.diffusion(x, t), beta.view(-1, 1, 1))
    torch.testing.assert_close(s.loss_weight(t), s.alpha(t) ** 2 / s.sigma(t) ** 2)


def test_vp_linear_steps_and_uniform_training_times():
    s = VPNoiseScheduler(epsilon_s=0.01, t_max=0.9)
    torch.testing.assert_close(
        s.timesteps(5, **F64), torch.tensor([0.9, 0.6775, 0.455, 0.2325, 0.01, 0.0], **F64)
    )
    torch.manual_seed(3)
    t = s.sample_time(20000, **F64)
    assert bool((t >= 0.01).all() and (t <= 0.9).all())
    _within(t.mean().item(), 0.455, 0.89 / math.sqrt(12 * 20000))


# iDDPM ----------------------------------------------------------------------------------------


def _abar(j, M, C_2):
    return math.sin(0.5 * math.pi * j / M / (C_2 + 1)) ** 2


@pytest.mark.parametrize("M,C_1,C_2", [(1000, 0.001, 0.008), (50, 0.05, 0.1)])
def test_iddpm_levels_satisfy_the_cosine_recursion(M, C_1, C_2):
    u = IDDPMNoiseScheduler(C_1=C_1, C_2=C_2, M=M)._u.double()
    assert u.shape == (M + 1,) and u[M] == 0 and bool((u.diff() < 0).all())
    j = torch.arange(1, M + 1)
    ratio = torch.tensor([max(_abar(k - 1, M, C_2) / _abar(k, M, C_2), C_1) for k in j.tolist()])
    lhs = (u[j - 1] ** 2 + 1) * ratio.double()
    torch.testing.assert_close(lhs, u[j] ** 2 + 1, rtol=1e-4, atol=0)


def test_iddpm_timesteps_pick_evenly_spaced_levels_in_range():
    s = IDDPMNoiseScheduler(sigma_min=0.01, sigma_max=40.0, M=200)
    kept = s._u[(s._u >= 0.01) & (s._u <= 40.0)]
    steps = s.timesteps(9)
    idx = torch.round(torch.arange(9) * (len(kept) - 1) / 8).long()
    torch.testing.assert_close(steps[:-1], kept[idx])
    assert steps[0] == kept.max() and steps[-2] == kept.min() and steps[-1] == 0
    torch.manual_seed(4)
    t = s.sample_time(500)
    assert bool(torch.isin(t, kept).all())
    torch.testing.assert_close(s.loss_weight(t), 1 / t**2)


# Student-t EDM --------------------------------------------------------------------------------


def test_student_t_noise_has_t_nu_variance_and_heavy_tails():
    nu = 10
    s = StudentTEDMNoiseScheduler(nu=nu)
    torch.manual_seed(5)
    n = s.add_noise(torch.zeros(20000, 4, **F64), torch.full((20000,), 2.0, **F64)) / 2.0
    var = nu / (nu - 2)  # 1.25
    _within(n.var().item(), var, 0.05 * var, k=1.0)
    kurtosis = (n**4).mean().item() / n.var().item() ** 2  # 3 + 6 / (nu - 4) = 4
    assert 3.4 < kurtosis < 5.0
    # kappa is shared by all elements of a sample: each row's spread varies with 1 / kappa.
    rows = s.init_latents((256,), torch.ones(2000, **F64), dtype=torch.float64).var(dim=1)
    assert rows.std().item() > 3 * math.sqrt(2 / 255)


def test_student_t_loss_weight_uses_effective_sigma_and_rejects_small_nu():
    t = torch.tensor([0.1, 1.0, 3.0])
    scale = math.sqrt(5 / 3)
    expected = EDMNoiseScheduler(sigma_data=0.5).loss_weight(t * scale)
    torch.testing.assert_close(StudentTEDMNoiseScheduler(nu=5).loss_weight(t), expected)
    with pytest.raises(ValueError, match="nu"):
        StudentTEDMNoiseScheduler(nu=2)


# Reverse process ------------------------------------------------------------------------------


def test_edm_denoiser_forms():
    s = EDMNoiseScheduler()
    x, x0 = torch.randn(3, 2, 4), torch.randn(3, 2, 4)
    t = torch.tensor([0.05, 1.0, 30.0])
    tb = t.view(-1, 1, 1)
    ode = s.get_denoiser(x0_predictor=lambda x_, t_: x0)
    torch.testing.assert_close(ode(x, t), (x - x0) / tb)  # Karras et al. 2022, Algorithm 1
    eps = torch.randn(3, 2, 4)
    torch.testing.assert_close(s.get_denoiser(epsilon_predictor=lambda x_, t_: eps)(x, t), eps)
    sde = s.get_denoiser(score_predictor=lambda x_, t_: eps, denoising_type="sde")
    torch.testing.assert_close(sde(x, t), -2 * tb * eps)  # -g^2 s with g^2 = 2t


def test_overridden_drift_is_used_by_the_denoiser():
    class OUDrift(EDMNoiseScheduler):
        def drift(self, x, t):
            return -0.5 * x

    s = OUDrift()
    x, score = torch.randn(2, 5), torch.randn(2, 5)
    t = torch.tensor([0.5, 2.0])
    for dtype_, k in (("ode", 0.5), ("sde", 1.0)):
        d = s.get_denoiser(score_predictor=lambda x_, t_: score, denoising_type=dtype_)
        torch.testing.assert_close(d(x, t), -0.5 * x - k * 2 * t.view(-1, 1) * score)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"x0_predictor": abs, "score_predictor": abs},
        {"x0_predictor": abs, "score_predictor": abs, "epsilon_predictor": abs},
    ],
)
def test_get_denoiser_needs_exactly_one_predictor(kwargs):
    with pytest.raises(ValueError, match="Exactly one"):
        EDMNoiseScheduler().get_denoiser(**kwargs)


def test_get_denoiser_rejects_unknown_denoising_type():
    with pytest.raises(ValueError, match="denoising_type"):
        VPNoiseScheduler().get_denoiser(x0_predictor=abs, denoising_type="euler")


@pytest.mark.parametrize(
    "make",
    [
        lambda: EDMNoiseScheduler(sigma_min=0.0),
        lambda: EDMNoiseScheduler(sigma_min=5.0, sigma_max=1.0),
        lambda: EDMNoiseScheduler(sigma_data=torch.ones(2, 3)),
        lambda: EDMNoiseScheduler(sigma_data=-0.5),
        lambda: VENoiseScheduler(sigma_min=-1.0),
        lambda: VPNoiseScheduler(beta_d=0.0),
        lambda: VPNoiseScheduler(epsilon_s=2.0),
        lambda: IDDPMNoiseScheduler(M=0),
        lambda: EDMNoiseScheduler().timesteps(1),
    ],
)
def test_invalid_settings_raise_value_error(make):
    with pytest.raises(ValueError):
        make()


def test_linear_gaussian_base_is_abstract():
    with pytest.raises(TypeError):
        LinearGaussianNoiseScheduler()
