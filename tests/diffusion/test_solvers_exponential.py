"""Exponential Euler and its EDM-churn stochastic variant: closed forms (Euler, DDIM, exact flow
of the linear part), splits, renoising, argument errors, sample() by name and instance."""

import functools

import pytest
import torch

from hpcdiff.core import Module
from hpcdiff.diffusion.multi_diffusion import MultiDiffusionModel2D, MultiDiffusionPredictor
from hpcdiff.diffusion.noise_schedulers import (
    EDMNoiseScheduler,
    FlowMatchingNoiseScheduler,
    IDDPMNoiseScheduler,
    RectifiedFlowNoiseScheduler,
    VENoiseScheduler,
    VPNoiseScheduler,
)
from hpcdiff.diffusion.samplers import (
    SOLVERS,
    EDMStochasticExponentialEulerSolver,
    EulerSolver,
    ExponentialEulerSolver,
    sample,
)

F64 = torch.float64
SCHEDULERS = {
    "edm": EDMNoiseScheduler,
    "ve": VENoiseScheduler,
    "iddpm": lambda: IDDPMNoiseScheduler(M=100),
    "rectified_flow": RectifiedFlowNoiseScheduler,
    "flow_matching": FlowMatchingNoiseScheduler,
    "vp": VPNoiseScheduler,
}


def bc(t, x):
    return t.view(-1, *([1] * (x.ndim - 1)))


def x0_predictor(x, t):
    return 0.6 * x / (1 + bc(t, x) ** 2) + 0.1


def solver_for(sch, denoiser, prediction_type="x0"):
    bias, bias_int, slope = sch.get_linear_denoiser(prediction_type=prediction_type)
    return ExponentialEulerSolver(denoiser, bias_fn=bias, bias_int_fn=bias_int, slope_fn=slope)


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_exact_for_the_linear_part(name):
    # A constant x0 estimate c makes F = a x + b c linear: exact flow x(t) = alpha c + sigma K,
    # K = (x - alpha c) / sigma fixed. One long step reproduces it (VP: to quadrature accuracy).
    sch = SCHEDULERS[name]()
    c, x = torch.randn(3, 2, 4, dtype=F64), torch.randn(3, 2, 4, dtype=F64)
    solver = solver_for(sch, sch.get_denoiser(x0_predictor=lambda x_, t_: c))
    grid = sch.timesteps(4, dtype=F64)
    tol = 1e-5 if name == "vp" else 1e-12
    for t_cur, t_next in ((grid[0], grid[2]), (grid[1], grid[3]), (grid[3], grid[4])):
        tc, tn = t_cur.expand(3), t_next.expand(3)
        a0, s0 = sch.alpha(bc(tc, x)), sch.sigma(bc(tc, x))
        a1, s1 = sch.alpha(bc(tn, x)), sch.sigma(bc(tn, x))
        exact = a1 * c + s1 * (x - a0 * c) / s0
        torch.testing.assert_close(solver.step(x, tc, tn), exact, rtol=tol, atol=tol)


@pytest.mark.parametrize("name", ["edm", "vp", "rectified_flow"])
@pytest.mark.parametrize("prediction_type", ["x0", "epsilon"])
def test_x0_and_epsilon_splits_give_ddim(name, prediction_type):
    # DDIM (Song et al. 2021): x_next = alpha' x0_hat + sigma' eps_hat, freezing either estimate.
    sch = SCHEDULERS[name]()
    solver = solver_for(sch, sch.get_denoiser(x0_predictor=x0_predictor), prediction_type)
    x = torch.randn(2, 3, 4, dtype=F64)
    grid = sch.timesteps(8, dtype=F64)
    tc, tn = grid[3].expand(2), grid[4].expand(2)
    x0 = x0_predictor(x, tc)
    eps = (x - sch.alpha(bc(tc, x)) * x0) / sch.sigma(bc(tc, x))
    ddim = sch.alpha(bc(tn, x)) * x0 + sch.sigma(bc(tn, x)) * eps
    torch.testing.assert_close(solver.step(x, tc, tn), ddim, rtol=1e-9, atol=1e-9)


def test_without_a_split_or_with_the_velocity_split_it_is_euler():
    rf = RectifiedFlowNoiseScheduler()
    denoiser = rf.get_denoiser(x0_predictor=x0_predictor)
    x = torch.randn(2, 3, 4, dtype=F64)
    tc, tn = torch.full((2,), 0.7, dtype=F64), torch.full((2,), 0.2, dtype=F64)
    euler = EulerSolver(denoiser).step(x, tc, tn)
    torch.testing.assert_close(ExponentialEulerSolver(denoiser).step(x, tc, tn), euler)
    torch.testing.assert_close(solver_for(rf, denoiser, "velocity").step(x, tc, tn), euler)


def test_zero_slope_drops_the_nonlinear_term():
    solver = ExponentialEulerSolver(
        lambda x, t: torch.full_like(x, 5.0),
        bias_fn=lambda t: -torch.ones_like(t),
        bias_int_fn=lambda t: -t,
        slope_fn=torch.zeros_like,
    )
    x = torch.ones(1, 3, dtype=F64)
    out = solver.step(x, torch.tensor([1.0], dtype=F64), torch.tensor([0.5], dtype=F64))
    torch.testing.assert_close(out, x * torch.exp(torch.tensor(0.5, dtype=F64)))


def test_argument_errors():
    with pytest.raises(ValueError, match="bias_fn and bias_int_fn"):
        ExponentialEulerSolver(abs, bias_fn=torch.zeros_like)
    with pytest.raises(ValueError, match="bias_fn and bias_int_fn"):
        EDMStochasticExponentialEulerSolver(abs, bias_int_fn=torch.zeros_like)
    with pytest.raises(ValueError, match="renoise"):
        EDMStochasticExponentialEulerSolver(abs, renoise=1.5)
    with pytest.raises(ValueError, match="sigma_fn and sigma_inv_fn"):
        EDMStochasticExponentialEulerSolver(abs, sigma_fn=abs)


def _stochastic(sch, denoiser, **options):
    return EDMStochasticExponentialEulerSolver(
        denoiser, **EDMStochasticExponentialEulerSolver.scheduler_defaults(sch), **options
    )


def test_stochastic_without_noise_is_deterministic_exponential_euler():
    vp = VPNoiseScheduler()
    denoiser = vp.get_denoiser(x0_predictor=x0_predictor)
    x = torch.randn(2, 3, dtype=F64)
    tc, tn = torch.full((2,), 0.6, dtype=F64), torch.zeros(2, dtype=F64)
    out = _stochastic(vp, denoiser, generator=torch.Generator().manual_seed(0)).step(x, tc, tn)
    torch.testing.assert_close(out, solver_for(vp, denoiser).step(x, tc, tn))


def test_churn_then_ddim_closed_form():
    # EDM: t_hat = (1 + gamma) t, x_hat = x + sqrt(t_hat^2 - t^2) eps1, then DDIM to t_next.
    edm = EDMNoiseScheduler()
    denoiser = edm.get_denoiser(x0_predictor=x0_predictor)
    x, t, t_next = torch.randn(2, 3, dtype=F64), torch.full((2,), 2.0, dtype=F64), 0.5
    solver = _stochastic(edm, denoiser, S_churn=4.0, num_steps=10)
    solver.generator = torch.Generator().manual_seed(1)
    out = solver.step(x, t, torch.full((2,), t_next, dtype=F64))
    eps1 = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    t_hat = 1.4 * t
    x_hat = x + (t_hat**2 - t**2).sqrt().view(-1, 1) * eps1
    x0 = x0_predictor(x_hat, t_hat)
    torch.testing.assert_close(out, x0 + t_next / t_hat.view(-1, 1) * (x_hat - x0))


@pytest.mark.parametrize("renoise", [0.6, 1.0])
def test_renoise_replaces_part_of_the_arrival_noise(renoise):
    # No churn, EDM: exponential Euler to t_dn = sqrt(1 - r^2) t_next, then + r t_next eps.
    edm = EDMNoiseScheduler()
    denoiser = edm.get_denoiser(x0_predictor=x0_predictor)
    x, t, t_next = torch.randn(2, 3, dtype=F64), torch.full((2,), 2.0, dtype=F64), 0.5
    solver = _stochastic(edm, denoiser, renoise=renoise, generator=torch.Generator().manual_seed(2))
    out = solver.step(x, t, torch.full((2,), t_next, dtype=F64))
    g = torch.Generator().manual_seed(2)
    torch.randn(x.shape, generator=g, dtype=F64)  # the (zero-scaled) churn draw comes first
    eps2 = torch.randn(x.shape, generator=g, dtype=F64)
    x0 = x0_predictor(x, t)
    t_dn = (1 - renoise**2) ** 0.5 * t_next
    expected = x0 + t_dn / t.view(-1, 1) * (x - x0) + renoise * t_next * eps2
    torch.testing.assert_close(out, expected)


class CallablePredictor:
    """A predictor object (like a multi-diffusion predictor): a callable, not a function."""

    def __init__(self, scale):
        self.scale = scale

    def __call__(self, x, t, condition=None):
        return self.scale * x / (1 + bc(t, x) ** 2) + condition


@pytest.mark.parametrize("name", ["exponential_euler", "edm_stochastic_exponential_euler"])
def test_sample_by_name_uses_the_scheduler_split_and_equals_the_instance(name):
    rf = RectifiedFlowNoiseScheduler()
    predictor = functools.partial(CallablePredictor(0.6), condition=torch.tensor(0.1, dtype=F64))
    denoiser = rf.get_denoiser(x0_predictor=predictor)
    xN = torch.randn(2, 3, 4, dtype=F64)
    options = {} if name == "exponential_euler" else {"S_churn": 2.0, "num_steps": 6, "S_max": 0.5}
    torch.manual_seed(0)
    by_name = sample(denoiser, xN, rf, 6, solver=name, solver_options=options)
    if name == "exponential_euler":
        instance = solver_for(rf, denoiser)
    else:
        instance = _stochastic(rf, denoiser, **options)
    torch.manual_seed(0)
    torch.testing.assert_close(by_name, sample(denoiser, xN, rf, 6, solver=instance))
    assert ExponentialEulerSolver.scheduler_defaults(object()) == {}  # protocol-only scheduler


@pytest.mark.parametrize(
    "name", ["exponential_euler", "edm_stochastic_exponential_euler", "dpmpp_2m_unic"]
)
def test_multi_diffusion_predictor_by_name_and_instance(name):
    class Net(Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Conv2d(2, 2, 1)

        def forward(self, x, t, condition=None):
            return 0.1 * self.net(x)

    torch.manual_seed(0)
    md = MultiDiffusionModel2D(Net(), global_spatial_shape=(12, 12))
    md.set_random_patching(patch_shape=(8, 8), patch_num=2)
    predictor = MultiDiffusionPredictor(md)
    predictor.set_patching(overlap_pix=4, boundary_pix=0)
    rf = RectifiedFlowNoiseScheduler()
    denoiser = rf.get_denoiser(x0_predictor=predictor)
    xN = rf.init_latents((2, 12, 12), torch.full((2,), rf.t_max))
    cls = SOLVERS[name]
    instance = cls(denoiser, **cls.scheduler_defaults(rf))
    with torch.no_grad():
        torch.manual_seed(1)
        by_name = sample(denoiser, xN, rf, 4, solver=name)
        torch.manual_seed(1)
        torch.testing.assert_close(sample(denoiser, xN, rf, 4, solver=instance), by_name)
    assert by_name.shape == xN.shape and bool(torch.isfinite(by_name).all())
