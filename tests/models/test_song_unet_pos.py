"""SongUNetPosEmbd: global positional grids, patch selection, and the TensorDict key path."""

import math

import pytest
import torch
from tensordict import TensorDict

from hpcdiff.models import SongUNet, SongUNetDiffusionModel, SongUNetPosEmbd, positional_grid
from hpcdiff.models.song_unet_pos import select_patches

ARCH = dict(model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.0)


def test_linear_and_test_grids_are_coordinates():
    lin = positional_grid("linear", 2, (3, 5))
    torch.testing.assert_close(lin[0, 0], torch.linspace(-1, 1, 5))  # u along W
    torch.testing.assert_close(lin[1, :, 0], torch.linspace(-1, 1, 3))  # v along H
    idx = positional_grid("test", 2, (3, 5))
    assert idx[0, 2, 4] == 2 and idx[1, 2, 4] == 4


def test_sinusoidal_grids_use_octave_or_legacy_frequency_bands():
    H, W = 4, 6
    u = torch.linspace(0, 2 * math.pi, W, dtype=torch.float64)
    octave = positional_grid("sinusoidal_octave", 8, (H, W))
    # channels: sin(u), sin(v), cos(u), cos(v) at frequency 1, then the same at 2
    torch.testing.assert_close(octave[0, 1], torch.sin(u).float())
    torch.testing.assert_close(octave[6, 1], torch.cos(2 * u).float())
    legacy = positional_grid("sinusoidal", 8, (H, W))  # bands 2**linspace(0, 2, 2) = 1, 4
    torch.testing.assert_close(legacy[4, 1], torch.sin(4 * u).float())
    for kind, c in (("sinusoidal_octave", 6), ("linear", 3), ("test", 4)):
        with pytest.raises(ValueError, match="N_grid_channels"):
            positional_grid(kind, c, (H, W))
    with pytest.raises(ValueError, match="not supported"):
        positional_grid("spiral", 4, (H, W))


def test_select_patches_cuts_the_grid_at_global_indices():
    grid = torch.arange(2 * 6 * 8.0).view(2, 6, 8)
    rows, cols = torch.meshgrid(torch.arange(3), torch.arange(4), indexing="ij")
    gi = torch.stack(
        [torch.stack([rows, cols]), torch.stack([rows + 3, cols + 4])]
    )  # (P=2, 2, 3, 4)
    out = select_patches(grid, gi, batch=3)
    assert out.shape == (6, 2, 3, 4)
    torch.testing.assert_close(out[0], grid[:, :3, :4])
    torch.testing.assert_close(out[1], grid[:, 3:, 4:])
    torch.testing.assert_close(out[5], grid[:, 3:, 4:])  # row i holds patch i % P


def _models():
    torch.manual_seed(0)
    pos = SongUNetPosEmbd(
        img_resolution=[16, 24], in_channels=2 + 4, out_channels=2, gridtype="learnable", **ARCH
    )
    plain = SongUNet(img_resolution=[16, 24], in_channels=2 + 4, out_channels=2, **ARCH)
    with torch.no_grad():
        for p in pos.parameters():
            p.normal_(0, 0.2)
    state = {k: v for k, v in pos.state_dict().items() if k != "pos_embd"}
    plain.load_state_dict(state)
    return pos.eval(), plain.eval()


def test_global_index_selector_and_positional_embedding_key_agree():
    pos, plain = _models()
    rows, cols = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    gi = torch.stack([torch.stack([rows, cols]), torch.stack([rows + 8, cols + 16])])  # (2,2,8,8)
    x, t = torch.randn(4, 2, 8, 8), torch.rand(4)
    by_index = pos(x, t, None, global_index=gi)
    pe = select_patches(pos.pos_embd, gi, batch=2)  # (4, 4, 8, 8)
    by_selector = pos(x, t, None, embedding_selector=lambda grid: select_patches(grid, gi, 2))
    torch.testing.assert_close(by_selector, by_index, rtol=0, atol=0)
    # The multi-diffusion path: the wrapper injects the patch embedding into the condition.
    adapter = SongUNetDiffusionModel(plain)
    cond = TensorDict({"positional_embedding": pe}, batch_size=[4])
    torch.testing.assert_close(adapter(x, t, cond), by_index, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="both"):
        pos(x, t, None, global_index=gi, embedding_selector=lambda g: g)


def test_without_indices_the_whole_grid_is_used():
    pos, plain = _models()
    x, t = torch.randn(2, 2, 16, 24), torch.rand(2)
    full = pos.pos_embd[None].expand(2, -1, -1, -1)
    torch.testing.assert_close(pos(x, t), plain(torch.cat([x, full], 1), t), rtol=1e-6, atol=1e-6)


def test_learnable_grid_is_a_parameter_and_fixed_grids_are_not_saved():
    pos, _ = _models()
    assert "pos_embd" in dict(pos.named_parameters())
    fixed = SongUNetPosEmbd(16, 2 + 4, 2, gridtype="sinusoidal_octave", **ARCH)
    assert "pos_embd" not in fixed.state_dict() and fixed.pos_embd.shape == (4, 16, 16)
    with pytest.warns(FutureWarning, match="legacy"):
        SongUNetPosEmbd(16, 2 + 4, 2, **ARCH)  # default gridtype="sinusoidal"
    none = SongUNetPosEmbd(16, 2, 2, gridtype="learnable", N_grid_channels=0, **ARCH)
    assert none.pos_embd is None and none(torch.randn(1, 2, 16, 16), torch.rand(1)).shape[1] == 2
