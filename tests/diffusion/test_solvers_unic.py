"""DPM-Solver++(2M) with the UniC-2 corrector (Zhao et al. 2023): exactness for an x0 estimate
quadratic in lambda, moments, call counts, names, resets and errors."""

import math

import pytest
import torch

from hpcdiff.diffusion.noise_schedulers import (
    EDMNoiseScheduler,
    RectifiedFlowNoiseScheduler,
    VPNoiseScheduler,
)
from hpcdiff.diffusion.samplers import (
    SOLVERS,
    DPMPlusPlus2M,
    DPMPlusPlus2MUniC2,
    DPMSolverPlusPlus2M,
    sample,
)
from hpcdiff.diffusion.samplers._semilinear import unic_moments

F64 = torch.float64
Q = torch.tensor([0.3, -0.7, 0.2], dtype=F64)  # D(lambda) = q0 + q1 lambda + q2 lambda^2


def lam(sch, t):
    return torch.log(sch.alpha(t) / sch.sigma(t))


def quadratic_x0(sch):
    """An x0 estimate that depends on t only, quadratic in lambda(t)."""

    def x0(x, t):
        lt = lam(sch, t).view(-1, *([1] * (x.ndim - 1)))
        return (Q[0] + Q[1] * lt + Q[2] * lt**2).expand_as(x)

    return x0


def exact_state(sch, x_start, t_start, t):
    """x(t) = sigma(t) (x_start / sigma_start + int e^l D(l) dl), the integral in closed form
    from int e^l (q0 + q1 l + q2 l^2) dl = e^l (q0 + q1 (l - 1) + q2 (l^2 - 2 l + 2))."""

    def antiderivative(l_):
        return torch.exp(l_) * (Q[0] + Q[1] * (l_ - 1) + Q[2] * (l_**2 - 2 * l_ + 2))

    l0, l1 = lam(sch, t_start), lam(sch, t)
    return sch.sigma(t) * (x_start / sch.sigma(t_start) + antiderivative(l1) - antiderivative(l0))


@pytest.mark.parametrize("make", [EDMNoiseScheduler, VPNoiseScheduler, RectifiedFlowNoiseScheduler])
def test_corrected_steps_are_exact_for_a_quadratic_x0_in_lambda(make):
    # From the second step on, UniC-2 fits D through three points exactly and integrates the
    # fitted quadratic exactly; the predictor alone (DPM-Solver++(2M)) does not.
    sch = make()
    grid = sch.timesteps(6, dtype=F64)[:-1]  # stay where lambda is finite
    x0 = quadratic_x0(sch)
    corrected = DPMSolverPlusPlus2M(x0, sch, denoiser_type="x0", corrector="unic")
    plain = DPMSolverPlusPlus2M(x0, sch, denoiser_type="x0")
    x_start = torch.randn(2, 3, dtype=F64)
    t0 = grid[0]
    for i in range(len(grid) - 1):
        x = exact_state(sch, x_start, t0, grid[i])  # restart each step on the exact path
        t_cur, t_next = grid[i].expand(2), grid[i + 1].expand(2)
        exact = exact_state(sch, x_start, t0, grid[i + 1])
        out, out_plain = corrected.step(x, t_cur, t_next), plain.step(x, t_cur, t_next)
        if i > 0:
            torch.testing.assert_close(out, exact, rtol=1e-10, atol=1e-10)
            assert (out_plain - exact).abs().max() > 1e-6


def test_moments_match_their_integrals():
    h = torch.tensor([1e-3, 0.3, 0.5, 2.0, 7.0], dtype=F64)
    u = torch.linspace(0, 1, 20001, dtype=F64).view(-1, 1) * h  # u in [0, h], (K, 5)
    kernel = torch.exp(-(h - u))
    I1 = torch.trapezoid(kernel * u, u, dim=0)
    I2 = torch.trapezoid(kernel * u**2 / 2, u, dim=0)
    m1, m2 = unic_moments(h)
    torch.testing.assert_close(m1, I1 / h, rtol=1e-7, atol=0)
    torch.testing.assert_close(m2, 2 * I2 / h**2, rtol=1e-7, atol=0)
    m1_32, m2_32 = unic_moments(h.float())  # series / direct forms hold in float32 too
    torch.testing.assert_close(m1_32.double(), m1, rtol=1e-6, atol=0)
    torch.testing.assert_close(m2_32.double(), m2, rtol=1e-6, atol=0)


def test_one_call_per_step_plus_one():
    edm = EDMNoiseScheduler()
    calls = []

    def x0(x, t):
        calls.append(t[0].item())
        return 0.5 * x

    grid = edm.timesteps(5, dtype=F64)
    sample(x0, torch.ones(1, 2, dtype=F64), edm, 5, solver=DPMPlusPlus2MUniC2(x0, edm, "x0"))
    # t_0, then each step's end point; the step to t = 0 evaluates at its start instead.
    assert calls == pytest.approx([grid[0].item(), *grid[1:5].tolist(), grid[4].item()])


def test_names_alias_and_reset():
    assert DPMPlusPlus2M is DPMSolverPlusPlus2M
    assert SOLVERS["dpmpp_2m_unic"] is DPMPlusPlus2MUniC2
    assert DPMPlusPlus2MUniC2(abs, EDMNoiseScheduler()).corrector == "unic"
    edm = EDMNoiseScheduler()
    denoiser = edm.get_denoiser(x0_predictor=lambda x, t: 0.5 * x)
    xN = torch.randn(2, 3, dtype=F64)
    solver = DPMPlusPlus2M(denoiser, edm, corrector="unic")
    first = sample(denoiser, xN, edm, 6, solver=solver)
    # sample() resets the multistep history, so a reused instance gives the same result.
    torch.testing.assert_close(sample(denoiser, xN, edm, 6, solver=solver), first)
    torch.testing.assert_close(sample(denoiser, xN, edm, 6, solver="dpmpp_2m_unic"), first)
    with pytest.raises(ValueError, match="corrector"):
        DPMPlusPlus2M(denoiser, edm, corrector="unipc")


def test_third_order_on_the_edm_gaussian():
    # Data N(mu, s^2) per element; exact x0 estimate and path x(t) = mu + sqrt(s^2 + t^2) z.
    mu, s = 0.7, 0.4
    edm = EDMNoiseScheduler()

    def x0(x, t):
        tb = t.view(-1, 1)
        return mu + s**2 / (s**2 + tb**2) * (x - mu)

    z = torch.randn(4, 16, generator=torch.Generator().manual_seed(0), dtype=F64)
    denoiser = edm.get_denoiser(x0_predictor=x0)
    errors = []
    for n in (32, 64):
        grid = edm.timesteps(n, dtype=F64)[:-1]
        xN = mu + (s**2 + grid[0] ** 2).sqrt() * z
        out = sample(denoiser, xN, edm, 0, solver="dpmpp_2m_unic", time_steps=grid)
        errors.append((out - (mu + (s**2 + grid[-1] ** 2).sqrt() * z)).abs().max().item())
    slope = math.log2(errors[0] / errors[1])
    assert 2.8 < slope < 3.4, (errors, slope)
