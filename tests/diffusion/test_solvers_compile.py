"""The new solvers trace into one graph under torch.compile and match eager (one compile case:
DPM-Solver++(2M) + UniC, whose exponential-integrator coefficients are the largest graph)."""

import torch

from hpcdiff.diffusion.noise_schedulers import RectifiedFlowNoiseScheduler
from hpcdiff.diffusion.samplers import sample


class VelocityPredictor:
    """A predictor object, as multi-diffusion predictors are."""

    def __call__(self, x, t):
        return 0.5 * x - t.view(-1, 1, 1, 1)


def test_compiled_unic_sample_on_rectified_flow_matches_eager():
    torch._dynamo.reset()
    rf = RectifiedFlowNoiseScheduler()
    denoiser = rf.get_denoiser(velocity_predictor=VelocityPredictor())
    grid = torch.tensor([0.99, 0.6, 0.3])  # two steps: the second one is corrected
    xN = rf.init_latents((3, 8, 8), grid[0].expand(2))

    def run(x):
        return sample(denoiser, x, rf, 0, solver="dpmpp_2m_unic", time_steps=grid)

    compiled = torch.compile(run, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(xN), run(xN), rtol=1e-5, atol=1e-5)
