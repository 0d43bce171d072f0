"""AdaptiveSolver (embedded Runge-Kutta pairs, PI-controlled steps) and optimize_schedule: error
control, call accounting, fewer calls than fixed-step Heun on EDM steps, learned grids."""

import math

import pytest
import torch

from hpcdiff.diffusion.noise_schedulers import EDMNoiseScheduler
from hpcdiff.diffusion.samplers import AdaptiveSolver, optimize_schedule, sample

F64 = torch.float64
MU = torch.tensor([1.0, -0.5, 2.0], dtype=F64).view(3, 1, 1)  # (C, 1, 1)
S = torch.tensor([0.5, 1.0, 0.2], dtype=F64).view(3, 1, 1)
T_MAX, T_MIN = 80.0, 0.002


class Counted:
    def __init__(self, f):
        self.f, self.calls = f, 0

    def __call__(self, x, t):
        self.calls += 1
        return self.f(x, t)


def edm_rhs(x, t):
    """EDM ODE rhs (x - x0_hat) / t for data N(mu, s^2) per channel."""
    tb = t.view(-1, 1, 1, 1)
    return (x - (MU + S**2 / (S**2 + tb**2) * (x - MU))) / tb


def gaussian_problem(batch=32, seed=0):
    z = torch.randn(batch, 3, 4, 4, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return MU + (S**2 + T_MAX**2).sqrt() * z, MU + S * z  # x(t_max), x(0) on the same path


def rms(x):
    return x.square().mean().sqrt().item()


def decay(x, t):
    return -x


@pytest.mark.parametrize("method", ["heun_euler", "bosh3"])
def test_error_falls_with_tolerance_on_exponential_decay(method):
    x = torch.ones(2, 3, dtype=F64)
    errors = []
    for tol in (1e-2, 1e-5):
        solver = AdaptiveSolver(decay, method=method, rtol=tol, atol=tol)
        out = solver.step(x, torch.zeros(2, dtype=F64), torch.full((2,), 2.0, dtype=F64))
        errors.append(abs(out[0, 0].item() - math.exp(-2)))
    assert errors[0] < 1e-2 and errors[1] < errors[0] / 100, errors


@pytest.mark.parametrize(("method", "stages"), [("heun_euler", 2), ("bosh3", 3)])
def test_call_accounting(method, stages):
    # bosh3 reuses its last stage (FSAL): 1 + 3 per attempt; heun_euler: 1 + 1 per attempt
    # + 1 per accepted step but the last. nfe counts the calls the denoiser really got.
    f = Counted(edm_rhs)
    solver = AdaptiveSolver(f, method=method, rtol=1e-3, atol=1e-3)
    xN, _ = gaussian_problem(4)
    solver.step(xN, torch.full((4,), T_MAX, dtype=F64), torch.full((4,), T_MIN, dtype=F64))
    acc, rej = solver.n_accepted, solver.n_rejected
    expected = 1 + 3 * (acc + rej) if stages == 3 else 1 + (acc + rej) + (acc - 1)
    assert solver.nfe == f.calls == expected
    times = solver.accepted_times
    assert times[0] == T_MAX and times[-1] == T_MIN and len(times) == acc + 1
    assert all(a > b for a, b in zip(times, times[1:]))


def test_step_to_zero_is_one_euler_step_and_counters_reset():
    f = Counted(edm_rhs)
    solver = AdaptiveSolver(f)
    x, t = gaussian_problem(2)[0], torch.full((2,), 0.5, dtype=F64)
    out = solver.step(x, t, torch.zeros(2, dtype=F64))
    torch.testing.assert_close(out, x - 0.5 * edm_rhs(x, t))
    assert solver.nfe == f.calls == 1
    solver.reset()
    assert (solver.nfe, solver.n_accepted, solver.accepted_times) == (0, 0, [])


def test_fewer_calls_than_heun_on_edm_steps_for_the_same_error():
    # The target: at the error the adaptive solver reaches, fixed-step Heun on the EDM
    # grid (Karras et al. 2022) with the same number of calls is worse.
    edm = EDMNoiseScheduler()
    xN, x0 = gaussian_problem()
    solver = AdaptiveSolver(edm_rhs, rtol=1e-3, atol=1e-3)
    grid = torch.tensor([T_MAX, T_MIN, 0.0], dtype=F64)
    err_adaptive = rms(sample(edm_rhs, xN, edm, 0, solver=solver, time_steps=grid) - x0)
    heun_steps = solver.nfe // 2  # Heun: two calls per step
    err_heun = rms(sample(edm_rhs, xN, edm, heun_steps, solver="heun") - x0)
    assert err_adaptive < 3e-3 and err_heun > 2 * err_adaptive, (err_adaptive, err_heun)


def test_by_name_with_options():
    edm = EDMNoiseScheduler()
    xN, x0 = gaussian_problem(4)
    grid = torch.tensor([T_MAX, T_MIN, 0.0], dtype=F64)
    out = sample(
        edm_rhs, xN, edm, 0, solver="adaptive", time_steps=grid,
        solver_options={"method": "heun_euler", "rtol": 1e-4, "atol": 1e-4},
    )  # fmt: skip
    assert rms(out - x0) < 1e-3


def test_argument_errors():
    with pytest.raises(ValueError, match="method"):
        AdaptiveSolver(decay, method="rk45")
    with pytest.raises(ValueError, match="rtol"):
        AdaptiveSolver(decay, rtol=0, atol=0)
    with pytest.raises(ValueError, match="factor_min"):
        AdaptiveSolver(decay, factor_min=2.0)
    with pytest.raises(ValueError, match="h_init"):
        AdaptiveSolver(decay, h_init=-1.0)
    with pytest.raises(ValueError, match="one t_cur"):
        AdaptiveSolver(decay).step(torch.ones(2, 1), torch.tensor([1.0, 2.0]), torch.zeros(2))
    with pytest.raises(RuntimeError, match="max_steps"):
        AdaptiveSolver(decay, rtol=1e-12, atol=1e-12, max_steps=3).step(
            torch.ones(1, 1), torch.zeros(1), torch.ones(1)
        )


def test_optimized_schedule_beats_edm_steps_for_heun():
    edm = EDMNoiseScheduler()
    calibration, _ = gaussian_problem(8, seed=1)
    grid = optimize_schedule(edm_rhs, calibration, T_MAX, T_MIN, num_steps=16)
    assert grid.shape == (17,) and grid.dtype == F64
    assert grid[0] == T_MAX and grid[-2] == pytest.approx(T_MIN) and grid[-1] == 0
    assert bool((grid.diff() < 0).all())
    xN, x0 = gaussian_problem(seed=2)  # samples the schedule was not fitted on
    err_opt = rms(sample(edm_rhs, xN, edm, 0, solver="heun", time_steps=grid) - x0)
    err_edm = rms(sample(edm_rhs, xN, edm, 16, solver="heun") - x0)
    assert err_opt < err_edm / 2, (err_opt, err_edm)
    # Without num_steps: as many steps as the tolerance needs; tighter tolerance, more steps.
    loose = optimize_schedule(edm_rhs, calibration, T_MAX, T_MIN, rtol=1e-2, atol=1e-2)
    tight = optimize_schedule(edm_rhs, calibration, T_MAX, T_MIN, rtol=1e-4, atol=1e-4)
    assert 3 <= len(loose) < len(tight)
    with pytest.raises(ValueError, match="t_min"):
        optimize_schedule(edm_rhs, calibration, 1.0, 2.0)
