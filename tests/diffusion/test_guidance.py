"""hpcdiff.diffusion.guidance: DPS / SDA likelihood scores against closed forms, and CFG."""

import pytest
import torch
import torch.nn.functional as F

from hpcdiff.diffusion import Predictor
from hpcdiff.diffusion.guidance import (
    ClassifierFreeGuidancePredictor,
    DataConsistencyDPSGuidance,
    DPSGuidance,
    DPSScorePredictor,
    ModelConsistencyDPSGuidance,
)

D, K = 6, 3  # state and observation sizes of the linear-Gaussian problem
MU, S = 0.4, 1.3  # prior x0 ~ N(MU, S^2 I)
T = torch.tensor([0.3, 1.0, 2.5], dtype=torch.float64)  # EDM: sigma(t) = t, alpha = 1


def _exact_x0(x, t):
    """E[x0 | x_t] for the Gaussian prior: (S^2 x + sigma^2 MU) / (S^2 + sigma^2)."""
    s2 = t.view(-1, 1) ** 2
    return (S**2 * x + s2 * MU) / (S**2 + s2)


def _edm_x0_to_score(x0, x, t):
    return (x0 - x) / t.view(-1, 1) ** 2


def _exact_posterior_score(x, t, A, y, std_y):
    """grad_x log p(x_t | y) by linear algebra: x0 | y ~ N(m, P^-1), x_t | y ~ N(m, P^-1 + s^2)."""
    eye = torch.eye(D, dtype=x.dtype)
    out = []
    for b in range(x.shape[0]):
        A_b = A[b] if A.ndim == 3 else A
        P = eye / S**2 + A_b.T @ A_b / std_y**2
        m = torch.linalg.solve(P, MU / S**2 + A_b.T @ y[b] / std_y**2)
        cov = torch.linalg.inv(P) + t[b] ** 2 * eye
        out.append(-torch.linalg.solve(cov, x[b] - m))
    return torch.stack(out)


@pytest.fixture
def problem():
    g = torch.Generator().manual_seed(0)
    A = torch.linalg.qr(torch.randn(D, K, generator=g, dtype=torch.float64))[0].T  # A A^T = I
    y = torch.randn(3, K, generator=g, dtype=torch.float64)
    x = torch.randn(3, D, generator=g, dtype=torch.float64) * 2
    return A, y, x


def test_sda_guided_score_is_the_exact_posterior_score(problem):
    # With A A^T = I and gamma = Var[x0 | x_t] / sigma^2 = S^2 / (S^2 + sigma^2), the SDA
    # likelihood N(y; A x0_hat, std_y^2 + gamma sigma^2) is exact (Rozet & Louppe 2023).
    A, y, x = problem
    std_y = torch.tensor(0.2, dtype=torch.float64)  # a Python float would be stored as float32
    gamma = (S**2 / (S**2 + T**2)).view(-1, 1)  # (B, 1), broadcasts to y (B, K)
    guidance = ModelConsistencyDPSGuidance(
        lambda x0: x0 @ A.T, y, std_y=std_y, gamma=gamma, sigma_fn=lambda t: t
    )
    pred = DPSScorePredictor(_exact_x0, _edm_x0_to_score, guidance)
    with torch.no_grad():
        score = pred(x, T)
    expected = _exact_posterior_score(x, T, A, y, std_y)
    torch.testing.assert_close(score, expected, rtol=1e-10, atol=1e-10)
    assert score.grad_fn is None


def test_data_consistency_with_mask_is_the_exact_posterior_score(problem):
    _, _, x = problem
    std_y = torch.tensor(0.3, dtype=torch.float64)
    mask = torch.tensor([[1, 0, 1, 1, 0, 0], [0, 0, 0, 0, 0, 1], [1] * 6], dtype=torch.bool)
    y = torch.linspace(-1, 1, 18, dtype=torch.float64).view(3, D)
    gamma = (S**2 / (S**2 + T**2)).view(-1, 1)
    guidance = DataConsistencyDPSGuidance(mask, y, std_y, gamma=gamma, sigma_fn=lambda t: t)
    with torch.no_grad():
        score = DPSScorePredictor(_exact_x0, _edm_x0_to_score, [guidance])(x, T)
    A = torch.diag_embed(mask.double())  # (B, D, D): observe the masked components
    expected = _exact_posterior_score(x, T, A, y * mask, std_y)
    torch.testing.assert_close(score, expected, rtol=1e-10, atol=1e-10)


def _huber(r, delta=0.5):
    return F.huber_loss(r, torch.zeros_like(r), reduction="none", delta=delta)


NORMS = {
    # norm argument -> derivative of the elementwise loss l(r) at residual r
    2: lambda r: 2 * r,
    1: lambda r: torch.sign(r),
    3: lambda r: 3 * r.abs() ** 2 * torch.sign(r),
    "huber": lambda r: r.clamp(-0.5, 0.5),
}


@pytest.mark.parametrize("norm", list(NORMS))
def test_dps_gradient_through_a_linear_predictor(problem, norm):
    # x0_hat = x M^T, y_hat = x0_hat A^T: grad_x sum rho l(r) = (rho l'(r)) A M (chain rule).
    A, y, x = problem
    M = torch.randn(D, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    std_y = torch.tensor([0.1, 0.5, 1.0], dtype=torch.float64)  # per observation component
    norm_arg = (lambda a, b: _huber(a - b)) if norm == "huber" else norm
    guidance = ModelConsistencyDPSGuidance(lambda x0: x0 @ A.T, y, std_y, norm=norm_arg)
    x = x.clone().requires_grad_(True)
    out = guidance(x, T, x @ M.T)
    r = (x @ M.T @ A.T - y).detach()
    rho = 1 / (2 * std_y**2)
    torch.testing.assert_close(out, -(rho * NORMS[norm](r)) @ A @ M, rtol=1e-10, atol=1e-12)


def test_sda_rho_with_alpha_per_channel_and_per_sample_time():
    # rho = 1 / (2 (std_y^2 + gamma sigma(t)^2 / alpha(t)^2)); x0_hat = k x, so the
    # data-consistency term is -mask * 2 rho (k x - y) k.
    g = torch.Generator().manual_seed(2)
    B, C, H, W = 2, 3, 4, 5
    x = torch.randn(B, C, H, W, generator=g, requires_grad=True)
    y = torch.randn(B, C, H, W, generator=g)
    mask = torch.rand(B, C, H, W, generator=g) > 0.5
    std_y = torch.tensor([0.1, 0.2, 0.4]).view(1, C, 1, 1)
    gamma = torch.tensor([0.0, 0.5, 2.0]).view(1, C, 1, 1)
    t = torch.tensor([0.2, 0.9])

    def sigma_fn(t):
        return torch.sqrt(torch.expm1(9.95 * t**2 + 0.1 * t))  # VP sigma(t)

    def alpha_fn(t):
        return 1 / torch.sqrt(1 + sigma_fn(t) ** 2)

    guidance = DataConsistencyDPSGuidance(
        mask, y, std_y, gamma=gamma, sigma_fn=sigma_fn, alpha_fn=alpha_fn
    )
    k = 0.7
    out = guidance(x, t, k * x)
    t_bc = t.view(-1, 1, 1, 1)
    rho = 1 / (2 * (std_y**2 + gamma * sigma_fn(t_bc) ** 2 / alpha_fn(t_bc) ** 2))
    expected = -mask.float() * 2 * rho * (k * x - y) * k
    torch.testing.assert_close(out, expected.detach(), rtol=1e-5, atol=1e-6)
    assert torch.all(out[~mask] == 0)


def test_with_the_edm_scheduler_conversions(problem):
    from hpcdiff.diffusion.noise_schedulers import EDMNoiseScheduler

    scheduler = EDMNoiseScheduler()
    A, y, x = problem
    gamma = (S**2 / (S**2 + T**2)).view(-1, 1)
    guidance = ModelConsistencyDPSGuidance(
        lambda x0: x0 @ A.T,
        y,
        0.2,
        gamma=gamma,
        sigma_fn=scheduler.sigma,
        alpha_fn=scheduler.alpha,
    )
    pred = DPSScorePredictor(_exact_x0, scheduler.x0_to_score, guidance)
    with torch.no_grad():
        score = pred(x, T)
    torch.testing.assert_close(score, _exact_posterior_score(x, T, A, y, 0.2))


def test_several_guidances_add_up_and_need_retain_graph(problem):
    A, y, x = problem
    mask = torch.ones(3, D, dtype=torch.bool)

    def make(retain):
        return [
            DataConsistencyDPSGuidance(mask, x * 0, 0.5, retain_graph=retain),
            ModelConsistencyDPSGuidance(lambda x0: x0 @ A.T, y, 0.2),
        ]

    with torch.no_grad():
        both = DPSScorePredictor(_exact_x0, _edm_x0_to_score, make(True))(x, T)
        parts = [DPSScorePredictor(_exact_x0, _edm_x0_to_score, g)(x, T) for g in make(False)]
        score = _edm_x0_to_score(_exact_x0(x, T), x, T)
        with pytest.raises(RuntimeError):
            DPSScorePredictor(_exact_x0, _edm_x0_to_score, make(False))(x, T)
    torch.testing.assert_close(both, parts[0] + parts[1] - score)


def test_create_graph_gives_second_derivatives():
    # l = rho (x0 - y)^2 with x0 = x^2: guidance = -4 rho x (x^2 - y), d/dx sum = -4 rho (3x^2 - y)
    x = torch.tensor([[0.5, -1.5]], requires_grad=True)
    y = torch.tensor([[1.0, 2.0]])
    guidance = DataConsistencyDPSGuidance(
        torch.ones(1, 2, dtype=torch.bool), y, 1.0, retain_graph=True, create_graph=True
    )
    out = guidance(x, torch.ones(1), x**2)
    (hess_diag,) = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(hess_diag, -2 * (3 * x.detach() ** 2 - y))


def test_predictor_does_not_touch_the_callers_tensor_and_returns_a_predictor():
    x = torch.randn(2, 3)
    pred = DPSScorePredictor(
        lambda x, t: 0.5 * x,
        lambda x0, x, t: x0 - x,
        ModelConsistencyDPSGuidance(lambda x0: x0, torch.zeros(2, 3), 1.0),
    )
    out = pred(x, torch.ones(2))  # grad mode: works too
    torch.testing.assert_close(out.detach(), -0.5 * x - 0.25 * x)
    assert not x.requires_grad and isinstance(pred, Predictor)
    assert isinstance(pred.guidances[0], DPSGuidance)


def test_inference_mode_is_refused():
    x, t = torch.randn(1, 4), torch.ones(1)
    y = torch.zeros(1, 4)
    mc = ModelConsistencyDPSGuidance(lambda x0: x0, y, 1.0)
    dc = DataConsistencyDPSGuidance(torch.ones(1, 4, dtype=torch.bool), y, 1.0)
    pred = DPSScorePredictor(lambda x, t: x, lambda x0, x, t: x0, mc)
    with torch.inference_mode():
        for call in (lambda: pred(x, t), lambda: mc(x, t, x), lambda: dc(x, t, x)):
            with pytest.raises(RuntimeError, match="inference_mode"):
                call()


def test_invalid_arguments():
    y = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="sigma_fn"):
        ModelConsistencyDPSGuidance(lambda x0: x0, y, 1.0, gamma=0.5)
    with pytest.raises(ValueError, match="broadcast"):
        DataConsistencyDPSGuidance(torch.ones(2, 3), y, torch.ones(4))
    with pytest.raises(ValueError, match="broadcast"):
        ModelConsistencyDPSGuidance(lambda x0: x0, y, 1.0, gamma=torch.ones(3, 1))
    with pytest.raises(ValueError, match="norm"):
        ModelConsistencyDPSGuidance(lambda x0: x0, y, 1.0, norm=0)
    with pytest.raises(TypeError, match="norm"):
        ModelConsistencyDPSGuidance(lambda x0: x0, y, 1.0, norm="l2")
    with pytest.raises(TypeError, match="guidances"):
        DPSScorePredictor(lambda x, t: x, lambda x0, x, t: x0, [3])


# ---------------------------------------------------------------- classifier-free guidance
def _counting(fn, calls, name):
    def pred(x, t):
        calls.append(name)
        return fn(x, t)

    return pred


def _cond(x, t):
    return torch.tanh(x) + t.view(-1, 1, 1)


def _uncond(x, t):
    return 0.5 * x


def test_cfg_scale_zero_and_one_are_the_plain_predictors():
    x, t = torch.randn(2, 3, 4), torch.rand(2)
    calls = []
    cond, uncond = _counting(_cond, calls, "c"), _counting(_uncond, calls, "u")
    assert torch.equal(ClassifierFreeGuidancePredictor(cond, uncond, 1.0)(x, t), _cond(x, t))
    assert torch.equal(ClassifierFreeGuidancePredictor(cond, uncond, 0)(x, t), _uncond(x, t))
    assert calls == ["c", "u"]  # each shortcut evaluates one predictor only
    per_channel = torch.tensor([0.0, 1.0, 1.0]).view(1, 3, 1)
    out = ClassifierFreeGuidancePredictor(cond, uncond, per_channel)(x, t)
    assert torch.equal(out[:, 0], _uncond(x, t)[:, 0])
    assert torch.equal(out[:, 1:], _cond(x, t)[:, 1:])


@pytest.mark.parametrize("scale", [-0.5, 0.3, 2.0, 7.5])
def test_cfg_is_uncond_plus_scale_times_difference(scale):
    x, t = torch.randn(2, 3, 4), torch.rand(2)
    out = ClassifierFreeGuidancePredictor(_cond, _uncond, scale)(x, t)
    u, c = _uncond(x, t), _cond(x, t)
    torch.testing.assert_close(out, u + scale * (c - u))


def test_cfg_is_affine_in_scale_and_commutes_with_prediction_conversions():
    x, t = torch.randn(2, 3, 4), torch.rand(2) + 0.5
    f = {s: ClassifierFreeGuidancePredictor(_cond, _uncond, s)(x, t) for s in (1.5, 2.5, 3.5)}
    torch.testing.assert_close(f[2.5], (f[1.5] + f[3.5]) / 2)
    # EDM x0 -> score and x0 -> epsilon are affine in x0 at fixed (x, t): guiding x0-predictors
    # then converting equals converting each predictor then guiding.
    sigma = t.view(-1, 1, 1)
    for conv in (lambda x0: (x0 - x) / sigma**2, lambda x0: (x - x0) / sigma):
        guided = ClassifierFreeGuidancePredictor(_then(_cond, conv), _then(_uncond, conv), 2.5)
        torch.testing.assert_close(guided(x, t), conv(f[2.5]))


def _then(pred, conv):
    return lambda x, t: conv(pred(x, t))


def test_cfg_validation_and_protocol():
    assert isinstance(ClassifierFreeGuidancePredictor(_cond, _uncond, 2.0), Predictor)
    with pytest.raises(TypeError, match="scale"):
        ClassifierFreeGuidancePredictor(_cond, _uncond, "2")
    with pytest.raises(TypeError, match="scale"):
        ClassifierFreeGuidancePredictor(_cond, _uncond, True)
    with pytest.raises(TypeError, match="uncond_pred"):
        ClassifierFreeGuidancePredictor(_cond, None, 2.0)
