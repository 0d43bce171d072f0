"""MultiDiffusionPredictor: chunking, checkpointing, sampling, and seams with blending."""

import math

import pytest
import torch
from tensordict import TensorDict

from hpcdiff.core import Module
from hpcdiff.diffusion.multi_diffusion import (
    GridPatching2D,
    MultiDiffusionModel2D,
    MultiDiffusionPredictor,
)
from hpcdiff.diffusion.noise_schedulers import EDMNoiseScheduler
from hpcdiff.diffusion.samplers import sample


class ConvNet(Module):
    """Small nonlinear patch model consuming x, an image condition and the embedding."""

    def __init__(self, channels: int = 2, extra: int = 0):
        super().__init__()
        self.conv = torch.nn.Conv2d(channels + extra, channels, 3, padding=1)

    def forward(self, x, t, condition=None):
        parts = [x] if condition is None else [x, *(condition[k] for k in sorted(condition.keys()))]
        h = torch.tanh(self.conv(torch.cat(parts, dim=1)))
        return h + x / (1 + t.view(-1, 1, 1, 1) ** 2)


def make_model(pe: str | None = "sinusoidal"):
    torch.manual_seed(0)
    extra = 2 + (4 if pe else 0)
    md = MultiDiffusionModel2D(
        ConvNet(2, extra), (14, 17), positional_embedding=pe, condition_patch={"img": True}
    )
    md.set_random_patching((6, 7), patch_num=4)
    return md


def condition(B=2):
    return TensorDict({"img": torch.randn(B, 2, 14, 17)}, batch_size=[B])


def test_matches_the_grid_wrapper_and_chunks_match_unchunked():
    md = make_model()
    cond = condition()
    x, t = torch.randn(2, 2, 14, 17), torch.rand(2) + 0.2
    full = MultiDiffusionPredictor(md, condition=cond)
    full.set_patching(overlap_pix=2, boundary_pix=1)
    with torch.no_grad():
        expected = full(x, t)
        # Same as the wrapper's own grid forward with positional-embedding injection.
        ref = make_model()
        ref.set_grid_patching((6, 7), overlap_pix=2, boundary_pix=1)
        assert torch.allclose(ref(x, t, condition=cond.clone()), expected, atol=1e-6)
        for chunk in (1, 5, 64):
            chunked = MultiDiffusionPredictor(md, condition=cond, chunk_size=chunk)
            chunked.set_patching(overlap_pix=2, boundary_pix=1)
            assert torch.allclose(chunked(x, t), expected, atol=1e-6)
            chunked.fuse = False
            assert torch.allclose(chunked(x, t), _patched(full, x, t), atol=1e-6)
            parts = [c for _, c, _, _ in chunked.chunks(x, t)]
            assert all(c.shape[0] <= chunk for c in parts)
            assert torch.allclose(chunked.fuse_fn(torch.cat(parts)), expected, atol=1e-6)


def _patched(predictor, x, t):
    predictor.fuse = False
    out = predictor(x, t)
    predictor.fuse = True
    return out


def test_chunked_sampling_never_patches_or_fuses_the_whole_state(monkeypatch):
    """With chunk_size and no autograd, only the chunk's patches exist at any time: the
    full-state ``apply`` / ``fuse`` are never called and the model sees <= chunk_size rows."""
    md = make_model()
    cond = condition()
    x, t = torch.randn(2, 2, 14, 17), torch.rand(2) + 0.2
    full = MultiDiffusionPredictor(md, condition=cond)
    full.set_patching(overlap_pix=2, boundary_pix=1)
    with torch.no_grad():
        expected = full(x, t)
    pred = MultiDiffusionPredictor(md, condition=cond, chunk_size=5)
    pred.set_patching(overlap_pix=2, boundary_pix=1)
    sizes, inner = [], md.model.forward
    monkeypatch.setattr(
        md.model,
        "forward",
        lambda x, t, condition=None: sizes.append(len(x)) or inner(x, t, condition),
    )
    for name in ("apply", "fuse", "fuse_chunks"):
        monkeypatch.setattr(pred._patching, name, _forbidden)
    with torch.no_grad():
        out = pred(x, t)
    assert max(sizes) <= 5 and sum(sizes) == 2 * pred._patching.patch_num
    assert torch.allclose(out, expected, atol=1e-6)


def _forbidden(*args, **kwargs):
    raise AssertionError("the whole state was patched or fused")


@pytest.mark.parametrize("chunk", [None, 3])
def test_checkpointing_gives_the_same_gradients(chunk):
    md = make_model(pe="learnable")
    cond = condition()
    x = torch.randn(2, 2, 14, 17)
    t = torch.rand(2) + 0.2
    grads = []
    for use_ckpt in (False, True):
        pred = MultiDiffusionPredictor(
            md, condition=cond, chunk_size=chunk, use_checkpointing=use_ckpt
        )
        pred.set_patching(overlap_pix=2, boundary_pix=1)
        xg = x.clone().requires_grad_(True)
        loss = pred(xg, t).square().sum()
        params = [md.pos_embd, *md.model.parameters()]
        grads.append(torch.autograd.grad(loss, [xg, *params]))
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-5)


def test_sampling_through_the_denoiser_and_prediction_types():
    md = make_model(pe=None)
    cond = condition(B=1)
    sched = EDMNoiseScheduler()
    pred = MultiDiffusionPredictor(md, condition=cond, chunk_size=5)
    pred.set_patching(overlap_pix=2, boundary_pix=0)
    torch.manual_seed(1)
    xN = 80 * torch.randn(1, 2, 14, 17)
    with torch.no_grad():
        x0 = sample(sched.get_denoiser(x0_predictor=pred), xN, sched, num_steps=4)
    assert x0.shape == xN.shape and torch.isfinite(x0).all()
    # An epsilon model converted to x0 gives the same predictor as its x0 form.
    eps_pred = MultiDiffusionPredictor(
        md,
        condition=cond,
        prediction_type="epsilon",
        epsilon_to_x0_fn=lambda eps, x, t: x - eps,
    )
    eps_pred.set_patching(overlap_pix=2, boundary_pix=0)
    x, t = torch.randn(1, 2, 14, 17), torch.ones(1)
    with torch.no_grad():
        assert torch.allclose(eps_pred(x, t), x - pred(x, t), atol=1e-6)


class EdgeErrorNet(Module):
    """A patch model that is exact (returns the patched field) except for an error decaying
    away from the patch edges, as zero-padded convolutions make near patch borders."""

    def __init__(self, amplitude: float = 0.5):
        super().__init__()
        self.amplitude = amplitude

    def forward(self, x, t, condition=None):
        Hp, Wp = x.shape[-2:]
        i, j = torch.arange(Hp)[:, None], torch.arange(Wp)[None, :]
        d = torch.minimum(torch.minimum(i, Hp - 1 - i), torch.minimum(j, Wp - 1 - j))
        return condition + self.amplitude * torch.exp(-d / 1.5)


def seam_energy_ratio(window: str) -> float:
    """Sample a smooth field and return the mean squared finite difference on the overlap
    bands of the grid divided by the same away from them."""
    H = W = 64
    yy, xx = torch.meshgrid(torch.arange(H) / H, torch.arange(W) / W, indexing="ij")
    field = (torch.sin(2 * math.pi * xx) + torch.cos(2 * math.pi * yy))[None, None]
    md = MultiDiffusionModel2D(EdgeErrorNet(), (H, W), condition_patch=True)
    md.set_random_patching((16, 16), patch_num=1)
    pred = MultiDiffusionPredictor(md, condition=field, chunk_size=7)
    pred.set_patching(overlap_pix=4, boundary_pix=2, window=window)
    sched = EDMNoiseScheduler()
    torch.manual_seed(0)
    with torch.no_grad():
        u = sample(
            sched.get_denoiser(x0_predictor=pred),
            80 * torch.randn(1, 1, H, W),
            sched,
            num_steps=4,
            solver="euler",
        )[0, 0]
    grid = GridPatching2D((H, W), (16, 16), 4, 2)
    left, _, top, _ = grid.padding
    bands = []
    for axis, offset in ((0, top), (1, left)):
        cover = torch.zeros(grid.padded_shape[axis])
        for o in grid.patch_origins()[:, axis].unique().tolist():
            cover[o : o + 16] += 1
        inside = cover[offset : offset + H] > 1  # image rows / columns in an overlap
        bands.append(inside[1:] | inside[:-1])  # differences touching an overlap
    band_y, band_x = bands
    dx2 = (u[:, 1:] - u[:, :-1]) ** 2
    dy2 = (u[1:] - u[:-1]) ** 2
    band = torch.cat([dx2[:, band_x].flatten(), dy2[band_y].flatten()]).mean()
    interior = torch.cat([dx2[:, ~band_x].flatten(), dy2[~band_y].flatten()]).mean()
    return float(band / interior)


def test_blending_window_removes_seams():
    assert seam_energy_ratio("uniform") > 3.0  # uniform averaging leaves visible seams
    assert seam_energy_ratio("cosine") < 1.3  # no excess gradient energy on the overlaps


def test_misuse_errors():
    md = make_model()
    pred = MultiDiffusionPredictor(md, condition=condition())
    x, t = torch.randn(2, 2, 14, 17), torch.ones(2)
    with pytest.raises(RuntimeError, match="set_patching"):
        pred(x, t)
    pred.set_patching(overlap_pix=0, boundary_pix=0)
    with pytest.raises(RuntimeError, match="chunk_size"):
        next(pred.chunks(x, t))
    with pytest.raises(ValueError, match="divisible"):
        pred.fuse_fn(torch.randn(5, 2, 6, 7))
    with pytest.raises(ValueError, match="batch size"):
        pred(torch.randn(3, 2, 14, 17), torch.ones(3))
    with pytest.raises(ValueError, match="chunk_size"):
        MultiDiffusionPredictor(md, chunk_size=0)
    with pytest.warns(UserWarning, match="patch_shape"):
        pred.set_patching(0, 0, patch_shape=(7, 7))
    fresh = MultiDiffusionModel2D(ConvNet(), (14, 17))
    with pytest.raises(RuntimeError, match="patch_shape"):
        MultiDiffusionPredictor(fresh).set_patching(0, 0)
