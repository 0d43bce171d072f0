"""The plain sampling path traces into one graph (no breaks, no host syncs) and matches eager."""

import pytest
import torch

from hpcdiff.diffusion.noise_schedulers import EDMNoiseScheduler, VPNoiseScheduler
from hpcdiff.diffusion.samplers import sample


def x0_predictor(x, t):
    return x / (1 + t.view(-1, 1, 1, 1) ** 2)


@pytest.mark.parametrize(
    ("scheduler", "solver"), [(EDMNoiseScheduler, "heun"), (VPNoiseScheduler, "dpm++2m")]
)
def test_compiled_sample_matches_eager(scheduler, solver):
    torch._dynamo.reset()
    sch = scheduler()
    denoiser = sch.get_denoiser(x0_predictor=x0_predictor)
    tN = sch.timesteps(4)[0].expand(2)
    xN = sch.init_latents((3, 8, 8), tN)

    def run(x):
        return sample(denoiser, x, sch, 4, solver=solver)

    compiled = torch.compile(run, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(xN), run(xN), rtol=1e-5, atol=1e-5)
