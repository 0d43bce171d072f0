"""Every code example of the seed documents (../shared/seeds) runs with the hpcdiff prefix.

The protocol examples of seed 000's API reference (DiffusionModel, Predictor, Denoiser) are
doctests in hpcdiff/diffusion/base.py; the remaining code blocks are reproduced here verbatim
except for the import prefix, followed by checks that they behave as the text says.
"""

import torch


def test_seed000_custom_scheduler_satisfies_protocol():
    # Any class with the right methods satisfies the NoiseScheduler protocol
    from hpcdiff.diffusion.noise_schedulers import NoiseScheduler

    class MyCustomScheduler:
        def sample_time(self, N, *, device=None, dtype=None): ...
        def add_noise(self, x0, time): ...
        def timesteps(self, num_steps, *, device=None, dtype=None): ...
        def init_latents(self, spatial_shape, tN, *, device=None, dtype=None): ...
        def get_denoiser(self, **kwargs): ...
        def loss_weight(self, t): ...

    assert isinstance(MyCustomScheduler(), NoiseScheduler)  # True

    class Incomplete:
        def sample_time(self, N, *, device=None, dtype=None): ...

    assert not isinstance(Incomplete(), NoiseScheduler)


def test_seed000_linear_gaussian_subclass_defines_a_working_schedule():
    from hpcdiff.diffusion.noise_schedulers import LinearGaussianNoiseScheduler

    class MyScheduler(LinearGaussianNoiseScheduler):
        def sigma(self, t):
            return t

        def sigma_inv(self, sigma):
            return sigma

        def sigma_dot(self, t):
            return torch.ones_like(t)

        def alpha(self, t):
            return torch.ones_like(t)

        def alpha_dot(self, t):
            return torch.zeros_like(t)

        def timesteps(self, num_steps, *, device=None, dtype=None): ...
        def sample_time(self, N, *, device=None, dtype=None): ...
        def loss_weight(self, t): ...

    scheduler = MyScheduler()
    # "handles noise injection, score conversion, and denoiser construction"
    x0 = torch.randn(3, 2, 4, 4)
    t = torch.tensor([0.5, 1.0, 2.0])
    eps_free = scheduler.add_noise(x0, torch.zeros(3))
    torch.testing.assert_close(eps_free, x0)
    x = x0 + 0.1
    score = scheduler.x0_to_score(x0, x, t)
    torch.testing.assert_close(score, (x0 - x) / t.view(-1, 1, 1, 1) ** 2)
    denoiser = scheduler.get_denoiser(x0_predictor=lambda x_, t_: x0)
    # EDM-like schedule sigma = t, alpha = 1: ODE rhs = (x - x0) / t
    torch.testing.assert_close(denoiser(x, t), (x - x0) / t.view(-1, 1, 1, 1))


def test_seed000_ready_to_use_edm_scheduler():
    from hpcdiff.diffusion.noise_schedulers import EDMNoiseScheduler

    scheduler = EDMNoiseScheduler(sigma_min=0.002, sigma_max=80.0, rho=7)
    steps = scheduler.timesteps(18)
    torch.testing.assert_close(steps[0], torch.tensor(80.0))
    torch.testing.assert_close(steps[17], torch.tensor(0.002))


def test_seed002_song_unet_adapter_runs_as_written():
    from hpcdiff.core import Module
    from hpcdiff.diffusion import DiffusionModel
    from hpcdiff.models.diffusion_unets import SongUNet

    class SongUNetAdapter(Module):
        def __init__(self, **kwargs):
            super().__init__()
            self.net = SongUNet(**kwargs)

        def forward(self, x, t, condition=None):
            return self.net(x, noise_labels=t, class_labels=condition)

    torch.manual_seed(0)
    model = SongUNetAdapter(
        img_resolution=16,
        in_channels=2,
        out_channels=2,
        model_channels=16,
        channel_mult=[1, 2],
        num_blocks=1,
        attn_resolutions=[8],
    )
    assert isinstance(model, DiffusionModel)
    x, t = torch.randn(2, 2, 16, 16), torch.rand(2)
    assert model(x, t).shape == (2, 2, 16, 16)
    # Module serialization support: the adapter saves and reloads with its wrapped backbone
    assert model.init_args["img_resolution"] == 16


def test_seed002_torch_module_into_serializable_module(tmp_path):
    """'torch.nn.Module subclass into a Module with serialization support'."""
    from hpcdiff.core import Module
    from hpcdiff.diffusion import DiffusionModel

    class External(torch.nn.Module):
        def __init__(self, channels):
            super().__init__()
            self.conv = torch.nn.Conv2d(channels, channels, 3, padding=1)

        def forward(self, x, t, condition=None):
            return self.conv(x) * t.view(-1, 1, 1, 1)

    Wrapped = Module.from_torch(External, name="SeedExternalModel")
    model = Wrapped(channels=3)
    assert isinstance(model, DiffusionModel)
    model.save(tmp_path / "ext.mdlus")
    loaded = Module.from_checkpoint(tmp_path / "ext.mdlus")
    x, t = torch.randn(2, 3, 8, 8), torch.rand(2)
    torch.testing.assert_close(loaded(x, t), model(x, t), rtol=0, atol=0)
