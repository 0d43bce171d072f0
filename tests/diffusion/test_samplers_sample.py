"""sample(): solver names and instances, time grids, intermediates, grad mode, errors."""

import pytest
import torch

from hpcdiff.diffusion.samplers import (
    SOLVERS,
    AdaptiveSolver,
    DPMPlusPlus2MUniC2,
    DPMSolverPlusPlus2M,
    EDMStochasticEulerSolver,
    EDMStochasticExponentialEulerSolver,
    EDMStochasticHeunSolver,
    EulerSolver,
    ExponentialEulerSolver,
    HeunSolver,
    sample,
)


class LinearGrid:
    """Minimal EDM-like scheduler: t from 2 to 0 in equal steps, alpha = 1, sigma = t."""

    def __init__(self):
        self.calls = []

    def timesteps(self, num_steps, *, device=None, dtype=None):
        self.calls.append((num_steps, device, dtype))
        return torch.linspace(2.0, 0.0, num_steps + 1, device=device, dtype=dtype)

    def alpha(self, t):
        return torch.ones_like(t)

    def alpha_dot(self, t):
        return torch.zeros_like(t)

    def sigma(self, t):
        return t

    def sigma_dot(self, t):
        return torch.ones_like(t)


def bc(t):
    return t.view(-1, 1, 1)


def rhs(x, t):
    """EDM ODE rhs (x - x0)/t for the x0-predictor x0 = 0.5 x."""
    return (x - 0.5 * x) / bc(t)


def xN():
    return torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(0)).double()


def manual_loop(solver, x, grid):
    for t_cur, t_next in zip(grid[:-1], grid[1:]):
        x = solver.step(x, t_cur.expand(x.shape[0]), t_next.expand(x.shape[0]))
    return x


def test_registry_names():
    assert SOLVERS == {
        "euler": EulerSolver,
        "heun": HeunSolver,
        "edm_stochastic_euler": EDMStochasticEulerSolver,
        "edm_stochastic_heun": EDMStochasticHeunSolver,
        "dpm++2m": DPMSolverPlusPlus2M,
        "dpmpp_2m": DPMSolverPlusPlus2M,
        "dpmpp_2m_unic": DPMPlusPlus2MUniC2,
        "exponential_euler": ExponentialEulerSolver,
        "edm_stochastic_exponential_euler": EDMStochasticExponentialEulerSolver,
        "adaptive": AdaptiveSolver,
    }


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("euler", lambda s: EulerSolver(rhs)),
        ("heun", lambda s: HeunSolver(rhs)),
        ("edm_stochastic_euler", lambda s: EDMStochasticEulerSolver(rhs)),
        ("edm_stochastic_heun", lambda s: EDMStochasticHeunSolver(rhs)),
        ("dpm++2m", lambda s: DPMSolverPlusPlus2M(rhs, s)),
        ("dpmpp_2m", lambda s: DPMSolverPlusPlus2M(rhs, s)),
    ],
)
def test_names_and_instances_equal_manual_loop(name, make):
    sch = LinearGrid()
    grid = sch.timesteps(6, dtype=torch.float64)
    want = manual_loop(make(sch), xN(), grid)
    torch.testing.assert_close(sample(rhs, xN(), sch, 6, solver=name), want)
    torch.testing.assert_close(sample(rhs, xN(), sch, 6, solver=make(sch)), want)


def test_default_solver_is_heun_and_grid_follows_xN():
    sch = LinearGrid()
    out = sample(rhs, xN(), sch, 4)
    assert sch.calls[-1] == (4, xN().device, torch.float64)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, manual_loop(HeunSolver(rhs), xN(), sch.timesteps(4).double()))


def test_euler_on_edm_rhs_closed_form():
    # dx/dt = x / (2t): each Euler step multiplies by 1 + (t_next - t) / (2t).
    grid = torch.tensor([2.0, 1.0, 0.5, 0.0], dtype=torch.float64)
    out = sample(rhs, xN(), LinearGrid(), 0, solver="euler", time_steps=grid)
    factor = (1 - 0.5 / 2) * (1 - 0.5 / 2) * (1 - 0.5)
    torch.testing.assert_close(out, xN() * factor)


def test_solver_options_reach_named_solver():
    sch = LinearGrid()
    heun_mid = manual_loop(HeunSolver(rhs, alpha=0.5), xN(), sch.timesteps(3).double())
    out = sample(rhs, xN(), sch, 3, solver="heun", solver_options={"alpha": 0.5})
    torch.testing.assert_close(out, heun_mid)
    gen = {"generator": torch.Generator().manual_seed(5), "S_churn": 10.0}
    a = sample(rhs, xN(), sch, 3, solver="edm_stochastic_heun", solver_options=gen)
    gen["generator"] = torch.Generator().manual_seed(5)
    b = sample(rhs, xN(), sch, 3, solver="edm_stochastic_heun", solver_options=gen)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_dpm_by_name_uses_given_scheduler_option():
    sch, other = LinearGrid(), LinearGrid()
    opts = {"noise_scheduler": other, "denoiser_type": "x0"}

    def x0_pred(x, t):
        return 0.5 * x

    out = sample(x0_pred, xN(), sch, 5, solver="dpm++2m", solver_options=opts)
    ode = sample(rhs, xN(), sch, 5, solver="dpm++2m")
    torch.testing.assert_close(out, ode)


def test_time_steps_override_ignores_num_steps_and_casts():
    sch = LinearGrid()
    grid = torch.tensor([2.0, 1.2, 0.4, 0.0])  # float32, cast to xN's float64
    out = sample(rhs, xN(), sch, 99, solver="euler", time_steps=grid)
    assert sch.calls == []
    torch.testing.assert_close(out, manual_loop(EulerSolver(rhs), xN(), grid.double()))


def test_time_eval_returns_copies_of_intermediate_states():
    sch = LinearGrid()
    grid = sch.timesteps(4).double()
    states = [xN()]
    for i in range(4):
        states.append(manual_loop(EulerSolver(rhs), states[-1], grid[i : i + 2]))
    out = sample(rhs, xN(), sch, 4, solver="euler", time_eval=[0, 2, 3])
    assert isinstance(out, list) and len(out) == 3
    for got, want in zip(out, [states[1], states[3], states[4]]):
        torch.testing.assert_close(got, want)
    assert sample(rhs, xN(), sch, 4, solver="euler", time_eval=[]) == []


@pytest.mark.parametrize("bad", [[4], [-1], [0, 7]])
def test_time_eval_out_of_range(bad):
    with pytest.raises(ValueError, match="time_eval"):
        sample(rhs, xN(), LinearGrid(), 4, time_eval=bad)


def test_unknown_solver_name():
    with pytest.raises(ValueError, match="Unknown solver 'rk4'.*\"dpm\\+\\+2m\""):
        sample(rhs, xN(), LinearGrid(), 4, solver="rk4")


def test_options_with_instance_and_non_solver():
    with pytest.raises(ValueError, match="solver_options"):
        sample(rhs, xN(), LinearGrid(), 4, solver=EulerSolver(rhs), solver_options={"a": 1})
    with pytest.raises(TypeError, match="step"):
        sample(rhs, xN(), LinearGrid(), 4, solver=42)


def test_bad_option_for_named_solver_raises_from_constructor():
    with pytest.raises(ValueError, match="alpha"):
        sample(rhs, xN(), LinearGrid(), 4, solver="heun", solver_options={"alpha": 2.0})
    with pytest.raises(TypeError):
        sample(rhs, xN(), LinearGrid(), 4, solver="euler", solver_options={"alpha": 0.5})


def test_grad_kept_when_enabled_and_detached_under_no_grad():
    w = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)

    def den(x, t):
        return (x - w * x) / bc(t)

    out = sample(den, xN(), LinearGrid(), 3, solver="euler")
    (grad,) = torch.autograd.grad(out.sum(), w)
    assert torch.isfinite(grad) and grad != 0

    class GradStep:  # builds a graph inside step, as a guided solver would
        def __init__(self):
            self.inputs_require_grad = []

        def step(self, x, t_cur, t_next):
            self.inputs_require_grad.append(x.requires_grad)
            with torch.enable_grad():
                return EulerSolver(den).step(x, t_cur, t_next)

    solver = GradStep()
    with torch.no_grad():
        out = sample(den, xN(), LinearGrid(), 3, solver=solver)
    assert not out.requires_grad and solver.inputs_require_grad == [False, False, False]
