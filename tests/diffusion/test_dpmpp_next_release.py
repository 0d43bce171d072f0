"""The next reference release's DPM-Solver++(2M) spelling runs here and gives today's numbers.

PhysicsNeMo's development branch builds ``DPMPlusPlus2M`` from a semi-linear split instead of
a scheduler. Its docstring example went through two spellings (``linear_fn=`` with
``get_linear_denoiser`` returning one function; then ``bias_fn=, bias_int_fn=, slope_fn=``
with a triple); both are quoted below as test data, unchanged except for the import prefix,
run with doctest, and their states compared with ``dpm++2m`` as ``sample()`` builds it.
"""

import doctest

import pytest
import torch

from hpcdiff.diffusion.noise_schedulers import EDMNoiseScheduler, VPNoiseScheduler
from hpcdiff.diffusion.samplers import SOLVERS, DPMPlusPlus2M, sample

# Quoted from the reference development branch's DPMPlusPlus2M docstring (linear_fn form).
EXAMPLE_LINEAR_FN = """
>>> import torch
>>> from hpcdiff.diffusion.noise_schedulers import EDMNoiseScheduler
>>> from hpcdiff.diffusion.samplers import DPMPlusPlus2M
>>>
>>> scheduler = EDMNoiseScheduler()
>>> x0_pred = lambda x, t: x * 0.1  # Toy x0-predictor
>>> # Both configurations use the same EDM probability-flow ODE.
>>> denoiser = scheduler.get_denoiser(x0_predictor=x0_pred)
>>> # The default callbacks recover classical two-step Adams-Bashforth.
>>> ab2_solver = DPMPlusPlus2M(denoiser)
>>> x_t = torch.randn(1, 3, 8, 8)
>>> x_mid = ab2_solver.step(x_t, torch.tensor([5.0]), torch.tensor([2.5]))
>>> x_next = ab2_solver.step(x_mid, torch.tensor([2.5]), torch.tensor([1.0]))
>>> x_next.shape
torch.Size([1, 3, 8, 8])
>>> # Separate the known linear dynamics from the denoiser output.
>>> linear_fn = scheduler.get_linear_denoiser(prediction_type="x0")
>>> # Extrapolation variable is the schedule's log-SNR.
>>> log_snr = lambda t: torch.log(scheduler.alpha(t) / scheduler.sigma(t))
>>> dpmpp_solver = DPMPlusPlus2M(
...     denoiser,
...     linear_fn=linear_fn,
...     lambda_fn=log_snr,
... )
>>> x_mid = dpmpp_solver.step(x_t, torch.tensor([5.0]), torch.tensor([2.5]))
>>> x_next = dpmpp_solver.step(x_mid, torch.tensor([2.5]), torch.tensor([1.0]))
>>> x_next.shape
torch.Size([1, 3, 8, 8])
>>> dpmpp_solver.reset()  # Before reusing it on a new trajectory
"""

# The same docstring's later spelling (bias / slope callbacks), from the line that differs.
SPLIT_TAIL = """
>>> # Separate the known affine structure from the denoiser output.
>>> bias, bias_int, slope = scheduler.get_linear_denoiser(
...     prediction_type="x0"
... )
>>> # Extrapolation variable is the schedule's log-SNR.
>>> log_snr = lambda t: torch.log(scheduler.snr(t))
>>> dpmpp_solver = DPMPlusPlus2M(
...     denoiser,
...     bias_fn=bias,
...     bias_int_fn=bias_int,
...     slope_fn=slope,
...     lambda_fn=log_snr,
... )
>>> x_mid = dpmpp_solver.step(x_t, torch.tensor([5.0]), torch.tensor([2.5]))
>>> x_next = dpmpp_solver.step(x_mid, torch.tensor([2.5]), torch.tensor([1.0]))
>>> x_next.shape
torch.Size([1, 3, 8, 8])
>>> dpmpp_solver.reset()  # Before reusing it on a new trajectory
"""
EXAMPLE_BIAS_FN = EXAMPLE_LINEAR_FN[: EXAMPLE_LINEAR_FN.index(">>> # Separate")] + SPLIT_TAIL


def run_example(text: str) -> dict:
    """Run ``text`` as a doctest; fail on any failed example; return its namespace."""
    test = doctest.DocTestParser().get_doctest(text, {}, "example", None, 0)
    result = doctest.DocTestRunner().run(test, clear_globs=False)
    assert result.failed == 0 and result.attempted > 10
    return test.globs


@pytest.mark.parametrize("text", [EXAMPLE_LINEAR_FN, EXAMPLE_BIAS_FN], ids=["linear_fn", "bias"])
def test_reference_example_runs_and_matches_todays_dpmpp_2m(text):
    ns = run_example(text)
    x_t, x_mid, x_next = ns["x_t"], ns["x_mid"], ns["x_next"]
    today = SOLVERS["dpm++2m"](ns["denoiser"], ns["scheduler"])  # as sample() builds it
    mid = today.step(x_t, torch.tensor([5.0]), torch.tensor([2.5]))
    torch.testing.assert_close(x_mid, mid, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(x_next, today.step(mid, torch.tensor([2.5]), torch.tensor([1.0])),
                               rtol=1e-6, atol=1e-6)  # fmt: skip
    # The Adams-Bashforth default is a different method: its second step differs.
    ab2 = ns["ab2_solver"]
    ab2.reset()
    ab2_next = ab2.step(ab2.step(x_t, torch.tensor([5.0]), torch.tensor([2.5])),
                        torch.tensor([2.5]), torch.tensor([1.0]))  # fmt: skip
    assert (ab2_next - x_next).abs().max() > 1e-3


@pytest.mark.parametrize("scheduler", [EDMNoiseScheduler(), VPNoiseScheduler()])
def test_split_form_samples_like_the_scheduler_form_to_t_zero(scheduler):
    """A whole run, ending at t = 0 (lambda = inf there: the last step is first order)."""
    denoiser = scheduler.get_denoiser(x0_predictor=lambda x, t: 0.8 * torch.tanh(x))
    xN = scheduler.init_latents((2, 6, 5), scheduler.timesteps(8)[:1].expand(3))
    ref = sample(denoiser, xN, scheduler, 8, solver="dpm++2m")
    split = DPMPlusPlus2M(denoiser, linear_fn=scheduler.get_linear_denoiser("x0"),
                          lambda_fn=lambda t: torch.log(scheduler.snr(t)))  # fmt: skip
    torch.testing.assert_close(sample(denoiser, xN, scheduler, 8, solver=split), ref,
                               rtol=1e-5, atol=1e-5)  # fmt: skip


def test_plain_linear_fn_freezes_a_over_the_step():
    """dx/dt = a(t) x with a(t) = -2 t: one first step is exp(h a(t_cur)) x exactly."""
    solver = DPMPlusPlus2M(lambda x, t: -2 * t[:, None] * x, linear_fn=lambda t: -2 * t)
    x = solver.step(torch.ones(1, 2), torch.tensor([1.0]), torch.tensor([0.5]))
    torch.testing.assert_close(x, torch.full((1, 2), float(torch.exp(torch.tensor(1.0)))))


def test_split_form_rejects_mixed_or_unsupported_arguments():
    edm = EDMNoiseScheduler()
    split = edm.get_linear_denoiser("x0")
    with pytest.raises(ValueError, match="not both"):
        DPMPlusPlus2M(lambda x, t: x, linear_fn=split, bias_fn=split.bias_fn)
    with pytest.raises(ValueError, match="noise_scheduler or"):
        DPMPlusPlus2M(lambda x, t: x, edm, linear_fn=split)
    with pytest.raises(ValueError, match="no corrector"):
        DPMPlusPlus2M(lambda x, t: x, corrector="unic", linear_fn=split)
    with pytest.raises(ValueError, match="both be provided"):
        DPMPlusPlus2M(lambda x, t: x, bias_fn=split.bias_fn)
