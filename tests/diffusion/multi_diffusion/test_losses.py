"""Patched DSM losses: one time per patch, positions redrawn per call, plain-loss math."""

import pytest
import torch

from hpcdiff.core import Module
from hpcdiff.diffusion.metrics import MSEDSMLoss, WeightedMSEDSMLoss
from hpcdiff.diffusion.multi_diffusion import (
    MultiDiffusionModel2D,
    MultiDiffusionMSEDSMLoss,
    MultiDiffusionWeightedMSEDSMLoss,
)


class Shrink(Module):
    """x0_hat = x / (1 + t^2) + mean of the patched condition."""

    def forward(self, x, t, condition=None):
        out = x / (1 + t.view(-1, 1, 1, 1) ** 2)
        return out if condition is None else out + condition.mean(dim=1, keepdim=True)


class Scheduler:
    """sigma(t) = t, times 1, 2, ..., N so that each patch gets its own; w(t) = 1 / t^2."""

    def __init__(self):
        self.drawn = []

    def sample_time(self, N, *, device=None, dtype=None):
        self.drawn.append(N)
        return torch.arange(1, N + 1, device=device, dtype=dtype) / N

    def add_noise(self, x0, time):
        return x0 + time.view(-1, 1, 1, 1) * torch.linspace(-1, 1, x0.shape[-1])

    def loss_weight(self, t):
        return 1 / t**2


@pytest.fixture
def md():
    torch.manual_seed(0)
    model = MultiDiffusionModel2D(Shrink(), (12, 14), condition_patch=True)
    model.set_random_patching((6, 5), patch_num=3)
    return model


def test_loss_is_the_plain_loss_on_patches_with_one_time_per_patch(md):
    x0, cond = torch.randn(2, 2, 12, 14), torch.randn(2, 3, 12, 14)
    sched = Scheduler()
    loss = MultiDiffusionMSEDSMLoss(md, sched, reduction="none")(
        x0, condition=cond, reset_patch_indices=False
    )
    assert sched.drawn == [6]  # P B times
    patched_model = lambda x, t, condition=None: md(  # noqa: E731
        x, t, condition, x_is_patched=True, t_is_patched=True
    )
    plain = MSEDSMLoss(patched_model, Scheduler(), reduction="none")
    expected = plain(md.patch_x(x0), t=torch.arange(1, 7) / 6.0, condition=cond)
    assert loss.shape == (6, 2, 6, 5)
    assert torch.allclose(loss, expected)
    # Closed form for one element: w(t) (x_t / (1 + t^2) + c - x0)^2.
    x0p, cp = md.patch_x(x0), md.patch_x(cond).mean(dim=1, keepdim=True)
    t = (torch.arange(1, 7) / 6.0).view(-1, 1, 1, 1)
    x_t = x0p + t * torch.linspace(-1, 1, 5)
    assert torch.allclose(loss, (x_t / (1 + t**2) + cp - x0p) ** 2 / t**2, atol=1e-6)


def test_positions_are_redrawn_per_call_unless_disabled(md):
    loss_fn = MultiDiffusionMSEDSMLoss(md, Scheduler())
    x0, cond = torch.randn(2, 2, 12, 14), torch.randn(2, 3, 12, 14)
    before = md._patching.patch_indices.clone()
    loss_fn(x0, condition=cond, reset_patch_indices=False)
    assert torch.equal(md._patching.patch_indices, before)
    torch.manual_seed(5)
    loss_fn(x0, condition=cond)
    torch.manual_seed(5)
    redrawn = torch.stack([torch.randint(0, 7, (3,)), torch.randint(0, 10, (3,))], dim=1)
    assert torch.equal(md._patching.patch_indices, redrawn)


def test_weighted_loss_and_explicit_times(md):
    x0, cond = torch.randn(2, 2, 12, 14), torch.randn(2, 3, 12, 14)
    weight = torch.rand(2, 2, 12, 14)
    t = torch.rand(6) + 0.5
    loss = MultiDiffusionWeightedMSEDSMLoss(md, Scheduler(), reduction="sum")(
        x0, weight, condition=cond, reset_patch_indices=False, t=t
    )
    patched_model = lambda x, t, condition=None: md(  # noqa: E731
        x, t, condition, x_is_patched=True, t_is_patched=True
    )
    plain = WeightedMSEDSMLoss(patched_model, Scheduler(), reduction="sum")
    expected = plain(md.patch_x(x0), md.patch_x(weight), t=t, condition=cond)
    assert torch.allclose(loss, expected)
    with pytest.raises(ValueError, match="weight shape"):
        MultiDiffusionWeightedMSEDSMLoss(md, Scheduler())(x0, weight[:, :1], condition=cond)


def test_prediction_type_and_reduction_validation(md):
    with pytest.raises(ValueError, match="score_to_x0_fn"):
        MultiDiffusionMSEDSMLoss(md, Scheduler(), prediction_type="score")
    with pytest.raises(ValueError, match="reduction"):
        MultiDiffusionMSEDSMLoss(md, Scheduler(), reduction="max")
    with pytest.raises(TypeError):
        MultiDiffusionMSEDSMLoss(Shrink(), Scheduler())
    eps_loss = MultiDiffusionMSEDSMLoss(
        md, Scheduler(), prediction_type="epsilon", epsilon_to_x0_fn=lambda e, x, t: x - e
    )
    assert eps_loss(torch.randn(2, 2, 12, 14), condition=torch.randn(2, 3, 12, 14)).ndim == 0
