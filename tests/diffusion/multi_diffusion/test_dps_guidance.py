"""Patch-local DPS: closed-form guided scores, chunk independence, validation."""

import pytest
import torch

from hpcdiff.core import Module
from hpcdiff.diffusion.multi_diffusion import (
    MultiDiffusionDataConsistencyDPSGuidance,
    MultiDiffusionDPSGuidance,
    MultiDiffusionDPSScorePredictor,
    MultiDiffusionModel2D,
    MultiDiffusionModelConsistencyDPSGuidance,
    MultiDiffusionPredictor,
)

A = 0.7  # x0_hat = A x on every patch, so fused quantities have closed forms


class Scale(Module):
    def forward(self, x, t, condition=None):
        return A * x


def x0_to_score(x0, x, t):  # EDM: alpha = 1, sigma = t
    return (x0 - x) / t.view(-1, 1, 1, 1) ** 2


def predictor(chunk_size=3, overlap=2, boundary=1):
    md = MultiDiffusionModel2D(Scale(), (13, 11))
    md.set_random_patching((6, 5), patch_num=2)
    pred = MultiDiffusionPredictor(md, chunk_size=chunk_size)
    pred.set_patching(overlap_pix=overlap, boundary_pix=boundary)
    return pred


@pytest.fixture
def data():
    torch.manual_seed(0)
    x = 2 * torch.randn(2, 3, 13, 11)
    y = torch.randn(2, 3, 13, 11)
    mask = torch.rand(2, 3, 13, 11) > 0.5
    t = torch.tensor([0.5, 1.5])
    return x, y, mask, t


def test_data_consistency_score_has_the_closed_form(data):
    x, y, mask, t = data
    std = torch.rand(2, 3, 1, 1) + 0.5  # per (sample, channel)
    gamma = torch.rand(2, 3, 13, 11)  # per pixel
    pred = predictor()
    g = MultiDiffusionDataConsistencyDPSGuidance(
        pred, mask, y, std, gamma=gamma, sigma_fn=lambda t: t
    )
    score = MultiDiffusionDPSScorePredictor(pred, x0_to_score, g)
    with torch.no_grad():
        got = score(x, t)
    t_bc = t.view(-1, 1, 1, 1)
    variance = std**2 + gamma * t_bc**2
    expected = (A - 1) * x / t_bc**2 - A * mask * (A * x - y) / variance
    assert torch.allclose(got, expected, atol=1e-5)
    # Autograd enabled outside: same value, fused from the kept chunks.
    assert torch.allclose(score(x, t), expected, atol=1e-5)


def test_model_consistency_with_several_guidances_and_any_chunking(data):
    x, y, mask, t = data
    results = []
    for chunk in (1, 4, 1000):
        pred = predictor(chunk_size=chunk)
        guidances = [
            MultiDiffusionModelConsistencyDPSGuidance(
                pred, lambda z: z[:, :1], y[:, :1], std_y=0.5, retain_graph=True
            ),
            MultiDiffusionDataConsistencyDPSGuidance(pred, mask, y, std_y=2.0, norm=1),
        ]
        with torch.no_grad():
            results.append(MultiDiffusionDPSScorePredictor(pred, x0_to_score, guidances)(x, t))
    first_channel = torch.zeros_like(x)
    first_channel[:, :1] = 1
    expected = (
        (A - 1) * x / t.view(-1, 1, 1, 1) ** 2
        - first_channel * A * (A * x - y) / 0.25
        - A * mask * torch.sign(A * x - y) / 8.0
    )
    for r in results:
        assert torch.allclose(r, expected, atol=1e-5)


def test_full_batch_mode_fuses_on_request(data):
    x, y, mask, t = data
    pred = predictor(chunk_size=None)
    g = MultiDiffusionDataConsistencyDPSGuidance(pred, mask, y, std_y=1.0, fuse=True)
    assert isinstance(g, MultiDiffusionDPSGuidance)
    x_p = pred.patch_fn(x).requires_grad_(True)
    term = g(x_p, t.repeat(pred._P), A * x_p)
    assert term.shape == x.shape
    assert torch.allclose(term, -A * mask * (A * x - y), atol=1e-6)
    g.fuse = False
    assert g(x_p, t.repeat(pred._P), A * x_p).shape == x_p.shape


def test_misuse_errors(data):
    x, y, mask, t = data
    with pytest.raises(TypeError, match="MultiDiffusionPredictor"):
        MultiDiffusionDPSScorePredictor(lambda x, t: x, x0_to_score, [])
    with pytest.raises(ValueError, match="chunk_size"):
        MultiDiffusionDPSScorePredictor(predictor(chunk_size=None), x0_to_score, [])
    pred = predictor()
    with pytest.raises(ValueError, match="sigma_fn"):
        MultiDiffusionDataConsistencyDPSGuidance(pred, mask, y, std_y=1.0, gamma=0.5)
    with pytest.raises(ValueError, match="broadcast"):
        MultiDiffusionDataConsistencyDPSGuidance(pred, mask, y, std_y=torch.ones(3, 1, 1, 1))
    score = MultiDiffusionDPSScorePredictor(pred, x0_to_score, [])
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        score(x, t)
