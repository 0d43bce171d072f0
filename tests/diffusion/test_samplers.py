"""Solver steps against closed forms: Euler, Heun(alpha), EDM churn, DPM-Solver++(2M)."""

import math

import pytest
import torch

from hpcdiff.diffusion.samplers import (
    DPMSolverPlusPlus2M,
    EDMStochasticEulerSolver,
    EDMStochasticHeunSolver,
    EulerSolver,
    HeunSolver,
    Solver,
)

B = 3


def times(value: float) -> torch.Tensor:
    return torch.full((B,), value, dtype=torch.float64)


def state(seed: int = 0) -> torch.Tensor:
    return torch.randn(B, 2, 4, 4, generator=torch.Generator().manual_seed(seed)).double()


def bc(t: torch.Tensor) -> torch.Tensor:
    return t.view(-1, 1, 1, 1)


class EDMLike:
    """alpha = 1, sigma = t (with derivatives), enough for DPMSolverPlusPlus2M."""

    def alpha(self, t):
        return torch.ones_like(t)

    def alpha_dot(self, t):
        return torch.zeros_like(t)

    def sigma(self, t):
        return t

    def sigma_dot(self, t):
        return torch.ones_like(t)


class VPLike:
    """alpha = exp(-t), sigma = sqrt(1 - alpha^2): a variance-preserving schedule."""

    def alpha(self, t):
        return torch.exp(-t)

    def alpha_dot(self, t):
        return -torch.exp(-t)

    def sigma(self, t):
        return torch.sqrt(1 - torch.exp(-2 * t))

    def sigma_dot(self, t):
        return torch.exp(-2 * t) / self.sigma(t)


@pytest.mark.parametrize(
    "solver",
    [
        EulerSolver(lambda x, t: x),
        HeunSolver(lambda x, t: x),
        EDMStochasticEulerSolver(lambda x, t: x),
        EDMStochasticHeunSolver(lambda x, t: x),
        DPMSolverPlusPlus2M(lambda x, t: x, EDMLike()),
    ],
)
def test_all_solvers_satisfy_protocol(solver):
    assert isinstance(solver, Solver)


@pytest.mark.parametrize("a", [-1.5, 0.7])
def test_euler_step_on_linear_ode(a):
    # dx/dt = a x: one Euler step multiplies by (1 + a h).
    x, t_cur, t_next = state(), times(1.0), times(0.6)
    out = EulerSolver(lambda x, t: a * x).step(x, t_cur, t_next)
    torch.testing.assert_close(out, x * (1 + a * (0.6 - 1.0)))


def test_euler_step_uses_per_sample_times():
    x = state()
    t_cur, t_next = torch.tensor([1.0, 2.0, 3.0]).double(), torch.tensor([0.5, 1.0, 0.0]).double()
    out = EulerSolver(lambda x, t: -x).step(x, t_cur, t_next)
    torch.testing.assert_close(out, x * (1 + bc(t_cur - t_next)))


@pytest.mark.parametrize("alpha", [1.0, 0.5, 0.25])
def test_heun_step_linear_autonomous_is_second_order_taylor(alpha):
    # Any 2-stage RK of order 2 gives exp(z) truncated after z^2/2 on dx/dt = a x.
    a, h = -1.3, -0.4
    x = state()
    out = HeunSolver(lambda x, t: a * x, alpha=alpha).step(x, times(1.0), times(1.0 + h))
    z = a * h
    torch.testing.assert_close(out, x * (1 + z + z * z / 2))


@pytest.mark.parametrize("alpha", [1.0, 0.5, 0.25])
def test_heun_step_time_dependent_closed_form(alpha):
    # dx/dt = t x: predictor at t + alpha h, weights (1 - 1/(2 alpha), 1/(2 alpha)).
    t, h = 1.0, -0.3
    x = state()
    out = HeunSolver(lambda x, t: bc(t) * x, alpha=alpha).step(x, times(t), times(t + h))
    x_prime = 1 + alpha * h * t
    d_prime = (t + alpha * h) * x_prime
    factor = 1 + h * ((1 - 1 / (2 * alpha)) * t + d_prime / (2 * alpha))
    torch.testing.assert_close(out, x * factor)


def test_heun_alpha_variants_differ_on_time_dependent_ode():
    x = state()
    outs = [
        HeunSolver(lambda x, t: bc(t) ** 2 * x, alpha=a).step(x, times(1.0), times(0.5))
        for a in (1.0, 0.5)
    ]
    assert not torch.allclose(*outs)


def test_heun_last_step_to_zero_is_euler_with_two_calls():
    calls = []

    def denoiser(x, t):
        calls.append(t.clone())
        return -x / bc(t)

    x, t_cur = state(), times(0.5)
    out = HeunSolver(denoiser).step(x, t_cur, times(0.0))
    torch.testing.assert_close(out, x + (0.0 - 0.5) * (-x / 0.5))
    # The corrector is still evaluated, at t_cur instead of t' = 0.
    assert len(calls) == 2
    torch.testing.assert_close(calls[1], t_cur)


@pytest.mark.parametrize("cls", [HeunSolver, EDMStochasticHeunSolver])
@pytest.mark.parametrize("alpha", [0.0, -0.5, 1.5])
def test_heun_alpha_out_of_range(cls, alpha):
    with pytest.raises(ValueError, match="alpha"):
        cls(lambda x, t: x, alpha=alpha)


@pytest.mark.parametrize(
    ("stochastic", "deterministic"),
    [(EDMStochasticEulerSolver, EulerSolver), (EDMStochasticHeunSolver, HeunSolver)],
)
@pytest.mark.parametrize("t_next", [0.4, 0.0])
def test_zero_churn_equals_deterministic(stochastic, deterministic, t_next):
    def den(x, t):
        return (x - 0.3 * x) / bc(t)

    x = state()
    out = stochastic(den, S_churn=0).step(x, times(1.2), times(t_next))
    torch.testing.assert_close(out, deterministic(den).step(x, times(1.2), times(t_next)))


@pytest.mark.parametrize("cls", [EDMStochasticEulerSolver, EDMStochasticHeunSolver])
def test_churn_noise_closed_form_with_zero_rhs(cls):
    # F = 0: x_next = x_hat = x + sqrt(t_hat^2 - t^2) eps, t_hat = (1 + gamma) t.
    S_churn, num_steps, t = 5.0, 20, 2.0
    x = state()
    solver = cls(lambda x, t: torch.zeros_like(x), S_churn=S_churn, num_steps=num_steps)
    solver.generator = torch.Generator().manual_seed(7)
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(7), dtype=x.dtype)
    t_hat = (1 + S_churn / num_steps) * t
    out = solver.step(x, times(t), times(1.0))
    torch.testing.assert_close(out, x + math.sqrt(t_hat**2 - t**2) * eps)


def test_churn_gamma_is_capped_and_noise_scaled():
    # gamma <= sqrt(2) - 1; S_noise and g^2 = 8t scale the noise by S_noise * 2.
    x, t = state(), 1.5
    solver = EDMStochasticEulerSolver(
        lambda x, t: torch.zeros_like(x),
        S_churn=100.0,
        S_noise=0.5,
        num_steps=10,
        diffusion_fn=lambda x, t: 8 * bc(t),
        generator=torch.Generator().manual_seed(3),
    )
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=x.dtype)
    t_hat = math.sqrt(2) * t
    out = solver.step(x, times(t), times(0.5))
    torch.testing.assert_close(out, x + math.sqrt(t_hat**2 - t**2) * 0.5 * 2.0 * eps)


def test_churn_in_noise_level_space():
    # sigma = 2t: t_hat = sigma_inv((1 + gamma) sigma). Euler adds variance t_hat^2 - t^2,
    # Heun sigma_hat^2 - sigma^2 (as the reference does); F = -x / t.
    x, t, gamma = state(), 1.0, 0.2
    kw = dict(S_churn=gamma * 10, num_steps=10, sigma_fn=lambda t: 2 * t)
    kw.update(sigma_inv_fn=lambda s: s / 2)
    t_hat = (1 + gamma) * t
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    euler = EDMStochasticEulerSolver(lambda x, t: -x / bc(t), **kw)
    euler.generator = torch.Generator().manual_seed(1)
    x_hat = x + math.sqrt(t_hat**2 - t**2) * eps
    out = euler.step(x, times(t), times(0.5))
    torch.testing.assert_close(out, x_hat * (1 + (0.5 - t_hat) * (-1 / t_hat)))
    heun = EDMStochasticHeunSolver(lambda x, t: torch.zeros_like(x), **kw)
    heun.generator = torch.Generator().manual_seed(1)
    out = heun.step(x, times(t), times(0.5))
    torch.testing.assert_close(out, x + math.sqrt(4 * t_hat**2 - 4 * t**2) * eps)


@pytest.mark.parametrize("cls", [EDMStochasticEulerSolver, EDMStochasticHeunSolver])
def test_churn_only_inside_s_min_s_max(cls):
    x = state()
    solver = cls(lambda x, t: torch.zeros_like(x), S_churn=10.0, S_min=0.5, S_max=1.0)
    for t in (0.2, 3.0):  # outside [S_min, S_max]: no noise although it is drawn
        torch.testing.assert_close(solver.step(x, times(t), times(0.1)), x)
    assert not torch.allclose(solver.step(x, times(0.8), times(0.1)), x)


@pytest.mark.parametrize("cls", [EDMStochasticEulerSolver, EDMStochasticHeunSolver])
def test_churn_reproducible_and_matches_global_generator(cls):
    def den(x, t):
        return -x / bc(t)

    x = state()
    runs = [
        cls(den, S_churn=30.0, generator=torch.Generator().manual_seed(11)).step(
            x, times(1.0), times(0.5)
        )
        for _ in range(2)
    ]
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)
    torch.manual_seed(11)
    global_rng = cls(den, S_churn=30.0).step(x, times(1.0), times(0.5))
    torch.testing.assert_close(global_rng, runs[0], rtol=0, atol=0)
    other = cls(den, S_churn=30.0, generator=torch.Generator().manual_seed(12))
    assert not torch.allclose(other.step(x, times(1.0), times(0.5)), runs[0])


@pytest.mark.parametrize("cls", [EDMStochasticEulerSolver, EDMStochasticHeunSolver])
def test_churn_argument_errors(cls):
    with pytest.raises(ValueError, match="sigma_fn and sigma_inv_fn"):
        cls(lambda x, t: x, sigma_fn=lambda t: t)
    with pytest.raises(ValueError, match="sigma_fn and sigma_inv_fn"):
        cls(lambda x, t: x, sigma_inv_fn=lambda t: t)
    with pytest.raises(ValueError, match="num_steps"):
        cls(lambda x, t: x, num_steps=0)


def _dpm_reference_step(sch, x, x0, x0_prev, h_prev, t_cur, t_next):
    """DPM-Solver++(2M) update written out with lambda = log(alpha / sigma)."""

    def f(fn, t):
        return float(fn(torch.tensor(t, dtype=torch.float64)))

    def lam(t):
        return math.log(f(sch.alpha, t) / f(sch.sigma, t))

    h = lam(t_next) - lam(t_cur)
    if x0_prev is None:
        D = x0
    else:
        r = h_prev / h
        D = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * x0_prev
    sigma_ratio = f(sch.sigma, t_next) / f(sch.sigma, t_cur)
    return sigma_ratio * x - f(sch.alpha, t_next) * math.expm1(-h) * D, h


@pytest.mark.parametrize("sch", [EDMLike(), VPLike()])
def test_dpm_two_steps_closed_form(sch):
    def x0_pred(x, t):
        return 0.6 * x + 0.1 * bc(t)

    x = state()
    solver = DPMSolverPlusPlus2M(x0_pred, sch, denoiser_type="x0")
    grid = [1.5, 0.9, 0.4]
    x1 = solver.step(x, times(grid[0]), times(grid[1]))
    want1, h1 = _dpm_reference_step(sch, x, x0_pred(x, times(grid[0])), None, None, *grid[:2])
    torch.testing.assert_close(x1, want1)
    x2 = solver.step(x1, times(grid[1]), times(grid[2]))
    x0_prev = x0_pred(x, times(grid[0]))
    want2, _ = _dpm_reference_step(sch, x1, x0_pred(x1, times(grid[1])), x0_prev, h1, *grid[1:])
    torch.testing.assert_close(x2, want2)


@pytest.mark.parametrize("sch", [EDMLike(), VPLike()])
def test_dpm_ode_rhs_mode_equals_x0_mode(sch):
    # The probability-flow rhs F = (alpha'/alpha) x - (sigma'/sigma - alpha'/alpha)(alpha x0 - x)
    # is inverted back to x0 in "ode" mode.
    def x0_pred(x, t):
        return 0.6 * x + 0.1 * bc(t)

    def rhs(x, t):
        t = bc(t)
        a_rate = sch.alpha_dot(t) / sch.alpha(t)
        return a_rate * x - (sch.sigma_dot(t) / sch.sigma(t) - a_rate) * (
            sch.alpha(t) * x0_pred(x, t.flatten()) - x
        )

    ode, x0 = DPMSolverPlusPlus2M(rhs, sch), DPMSolverPlusPlus2M(x0_pred, sch, "x0")
    a = b = state()
    for t_cur, t_next in [(1.5, 0.9), (0.9, 0.4), (0.4, 0.0)]:
        a = ode.step(a, times(t_cur), times(t_next))
        b = x0.step(b, times(t_cur), times(t_next))
    torch.testing.assert_close(a, b)


def test_dpm_last_step_to_zero_returns_alpha0_times_x0():
    def x0_pred(x, t):
        return 0.25 * x

    solver = DPMSolverPlusPlus2M(x0_pred, VPLike(), denoiser_type="x0")
    x = solver.step(state(), times(1.0), times(0.3))
    out = solver.step(x, times(0.3), times(0.0))
    torch.testing.assert_close(out, 0.25 * x)  # alpha(0) = 1; first order at t_next = 0


def test_dpm_history_used_only_when_continuing():
    def x0_pred(x, t):
        return 0.5 * x + 0.2

    x = state()
    fresh = DPMSolverPlusPlus2M(x0_pred, EDMLike(), "x0").step(x, times(0.9), times(0.4))
    reused = DPMSolverPlusPlus2M(x0_pred, EDMLike(), "x0")
    reused.step(state(1), times(2.0), times(1.0))  # ends at 1.0, not at 0.9
    torch.testing.assert_close(reused.step(x, times(0.9), times(0.4)), fresh)
    reused.step(state(1), times(2.0), times(0.9))  # ends at 0.9: second order now
    assert not torch.allclose(reused.step(x, times(0.9), times(0.4)), fresh)
    reused.reset()
    reused.step(state(1), times(2.0), times(0.9))
    reused.reset()
    torch.testing.assert_close(reused.step(x, times(0.9), times(0.4)), fresh)


def test_dpm_argument_errors():
    with pytest.raises(ValueError, match="denoiser_type"):
        DPMSolverPlusPlus2M(lambda x, t: x, EDMLike(), denoiser_type="score")
    with pytest.raises(TypeError, match="alpha"):
        DPMSolverPlusPlus2M(lambda x, t: x, object(), denoiser_type="x0")

    class NoDerivatives:
        alpha, sigma = EDMLike.alpha, EDMLike.sigma

    DPMSolverPlusPlus2M(lambda x, t: x, NoDerivatives(), denoiser_type="x0")
    with pytest.raises(TypeError, match="alpha_dot, sigma_dot"):
        DPMSolverPlusPlus2M(lambda x, t: x, NoDerivatives())
