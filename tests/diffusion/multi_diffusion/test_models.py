"""MultiDiffusionModel2D: patching of x, t and conditions, positional embeddings, fusing."""

import math

import pytest
import torch
import torch.nn.functional as F
from tensordict import TensorDict

from hpcdiff.core import Module
from hpcdiff.diffusion.multi_diffusion import GridPatching2D, MultiDiffusionModel2D


class Recorder(Module):
    """Returns x + t and keeps the last inputs it saw."""

    def __init__(self):
        super().__init__()
        self.seen = {}

    def forward(self, x, t, condition=None, **kw):
        self.seen = {"x": x, "t": t, "condition": condition, **kw}
        return x + t.view(-1, 1, 1, 1)


def test_positional_embedding_variants():
    H, W = 5, 7
    md = MultiDiffusionModel2D(Recorder(), (H, W), "linear", channels_positional_embedding=2)
    pe = md.pos_embd
    assert pe.shape == (2, H, W) and "pos_embd" in md.state_dict()
    lin = lambda n: -1 + 2 * torch.arange(n) / (n - 1)  # noqa: E731
    assert torch.allclose(pe[0, :, 3], lin(H), atol=1e-7) and torch.all(pe[0, 2] == 0)
    assert torch.allclose(pe[1, 4], lin(W), atol=1e-7)

    md = MultiDiffusionModel2D(Recorder(), (H, W), "sinusoidal", channels_positional_embedding=8)
    pe = md.pos_embd
    gy = torch.linspace(0, 2 * math.pi, H, dtype=torch.float64)[:, None].expand(H, W)
    gx = torch.linspace(0, 2 * math.pi, W, dtype=torch.float64)[None, :].expand(H, W)
    expected = torch.stack(
        [
            torch.sin(gx),
            torch.sin(gy),
            torch.cos(gx),
            torch.cos(gy),
            torch.sin(2 * gx),
            torch.sin(2 * gy),
            torch.cos(2 * gx),
            torch.cos(2 * gy),
        ]
    ).float()
    assert torch.allclose(pe, expected, atol=1e-6)
    assert "pos_embd" not in md.state_dict()  # fixed, rebuilt from the constructor

    md = MultiDiffusionModel2D(Recorder(), (H, W), "learnable", channels_positional_embedding=3)
    assert isinstance(md.pos_embd, torch.nn.Parameter) and md.pos_embd.shape == (3, H, W)
    assert MultiDiffusionModel2D(Recorder(), (H, W)).pos_embd is None
    for kind, C in (("linear", 3), ("sinusoidal", 6), ("fourier", 4)):
        with pytest.raises(ValueError):
            MultiDiffusionModel2D(Recorder(), (H, W), kind, channels_positional_embedding=C)


def test_positional_embedding_is_patched_with_the_state():
    torch.manual_seed(0)
    inner = Recorder()
    md = MultiDiffusionModel2D(inner, (12, 10), "learnable", channels_positional_embedding=3)
    md.set_random_patching((4, 5), patch_num=3)
    x = torch.randn(2, 1, 12, 10)
    md(x, torch.zeros(2))
    pe = inner.seen["condition"]["positional_embedding"]  # (P B, 3, 4, 5)
    for p, (y0, x0) in enumerate(md._patching.patch_indices.tolist()):
        for b in range(2):
            assert torch.equal(pe[2 * p + b], md.pos_embd[:, y0 : y0 + 4, x0 : x0 + 5])
    pe.sum().backward()  # gradients reach the learnable embedding
    assert md.pos_embd.grad.sum() == pe.numel()


@pytest.mark.parametrize("kind, C", [("sinusoidal", 8), ("linear", 2), ("learnable", 3)])
def test_positional_embedding_at_global_positions_without_the_global_embedding(kind, C):
    H, W = 37, 53
    md = MultiDiffusionModel2D(Recorder(), (H, W), kind, channels_positional_embedding=C)
    torch.manual_seed(1)
    rows = torch.randint(0, H, (3, 6))  # any indices, e.g. reflected ones
    cols = torch.randint(0, W, (3, 4))
    lazy = kind == "sinusoidal"
    held = lambda: "pos_embd" in md._buffers or "pos_embd" in md._parameters  # noqa: E731
    assert md.has_pos_embd and held() != lazy  # sinusoidal: nothing global yet
    at = md.positional_embedding_at(rows, cols)  # (3, C, 6, 4); sinusoidal: closed form
    corners = [[0, 0], [31, 49], [5, 17]]
    md.set_random_patching((6, 4), patch_num=3)
    md.set_patch_indices(torch.tensor(corners))
    md(torch.zeros(1, 1, H, W), torch.zeros(1))  # the training path: patches by index
    injected = md.model.seen["condition"]["positional_embedding"]
    assert held() != lazy
    full = md.pos_embd  # sinusoidal: built now, once, like the reference's buffer
    assert full.shape == (C, H, W) and md.pos_embd is full
    want = torch.stack([full[:, r][:, :, c] for r, c in zip(rows, cols)])
    assert at.shape == (3, C, 6, 4) and torch.equal(at, want)  # bit for bit
    for p, (r, c) in enumerate(corners):
        assert torch.equal(injected[p], full[:, r : r + 6, c : c + 4])
    if lazy:
        assert "pos_embd" not in md.state_dict()


def test_condition_strategies():
    inner = Recorder()
    md = MultiDiffusionModel2D(
        inner, (12, 10), condition_patch={"img": True}, condition_interp={"coarse": True}
    )
    md.set_grid_patching((6, 5), overlap_pix=1, fuse=False)
    gp = GridPatching2D((12, 10), (6, 5), 1)
    P = gp.patch_num
    cond = TensorDict(
        {
            "img": torch.randn(2, 2, 12, 10),
            "coarse": torch.randn(2, 1, 3, 4),
            "vec": torch.randn(2, 5),
        },
        batch_size=[2],
    )
    out = md.patch_condition(cond)
    assert out.batch_size == torch.Size([P * 2])
    assert torch.equal(out["img"], gp.apply(cond["img"]))
    resized = F.interpolate(cond["coarse"], size=(6, 5), mode="bilinear")
    assert torch.equal(out["coarse"], resized.repeat(P, 1, 1, 1))
    assert torch.equal(out["vec"], cond["vec"].repeat(P, 1))
    assert torch.equal(md.patch_t(torch.tensor([1.0, 2.0])), torch.tensor([1.0, 2.0] * P))
    # A plain tensor condition follows the global flags.
    md = MultiDiffusionModel2D(Recorder(), (12, 10), condition_patch=True)
    md.set_grid_patching((6, 5), overlap_pix=1)
    c = torch.randn(2, 2, 12, 10)
    assert torch.equal(md.patch_condition(c), gp.apply(c))


def test_forward_grid_fuses_and_prepatched_inputs_skip_conversion():
    torch.manual_seed(1)
    inner = Recorder()
    md = MultiDiffusionModel2D(inner, (12, 10), "linear", channels_positional_embedding=2)
    md.set_grid_patching((6, 5), overlap_pix=2, boundary_pix=1)
    x, t = torch.randn(3, 2, 12, 10), torch.rand(3)
    assert torch.allclose(md(x, t), x + t.view(-1, 1, 1, 1), atol=1e-6)  # fuse(patch(x) + t)
    cond = inner.seen["condition"]
    assert (
        set(cond.keys()) == {"positional_embedding"}
        and cond.batch_size[0] == 3 * md._patching.patch_num
    )
    md.set_grid_patching((6, 5), overlap_pix=2, boundary_pix=1, fuse=False)
    xp, tp = md.patch_x(x), md.patch_t(t)
    out = md(xp, tp, x_is_patched=True, t_is_patched=True)
    assert torch.equal(out, xp + tp.view(-1, 1, 1, 1))
    assert torch.equal(md.fuse(out, batch_size=3), md._patching.fuse(out, 3))
    with pytest.raises(ValueError, match="divisible"):
        md(xp[:5], tp[:5], x_is_patched=True, t_is_patched=True)


def test_without_patching_the_model_runs_globally():
    inner = Recorder()
    md = MultiDiffusionModel2D(inner, (6, 6), "linear", channels_positional_embedding=2)
    x = torch.randn(2, 1, 6, 6)
    with pytest.warns(UserWarning, match="No patching"):
        out = md(x, torch.zeros(2), condition=torch.ones(2, 1, 6, 6))
    assert torch.equal(out, x)
    assert set(inner.seen["condition"].keys()) == {"condition", "positional_embedding"}
    assert md.patch_shape is None


def test_save_and_load_keeps_the_patch_shape(tmp_path):
    md = MultiDiffusionModel2D(Recorder(), (12, 10), "learnable", channels_positional_embedding=2)
    md.set_random_patching((6, 4), patch_num=2)
    path = md.save(tmp_path / "md.mdlus")
    loaded = MultiDiffusionModel2D.from_checkpoint(path)
    assert loaded.patch_shape == (6, 4)
    assert torch.equal(loaded.pos_embd, md.pos_embd)


def test_misuse_errors():
    md = MultiDiffusionModel2D(Recorder(), (8, 8))
    with pytest.raises(RuntimeError, match="No patching"):
        md.patch_x(torch.randn(1, 1, 8, 8))
    with pytest.raises(RuntimeError, match="random"):
        md.reset_patch_indices()
    md.set_random_patching((4, 4), 2)
    with pytest.raises(RuntimeError, match="grid"):
        md.fuse(torch.randn(2, 1, 4, 4), 1)
    with pytest.raises(ValueError, match="global_spatial_shape"):
        md.patch_x(torch.randn(1, 1, 8, 9))
    with pytest.raises(TypeError):
        md.patch_condition([1])
    with pytest.raises(TypeError):
        MultiDiffusionModel2D(Recorder(), (8, 8), condition_patch="yes")
    both = MultiDiffusionModel2D(Recorder(), (8, 8), condition_patch=True, condition_interp=True)
    both.set_grid_patching((4, 4))
    with pytest.raises(ValueError, match="both"):
        both.patch_condition(torch.randn(1, 1, 8, 8))
    keyed = MultiDiffusionModel2D(Recorder(), (8, 8), condition_patch={"a": True})
    keyed.set_grid_patching((4, 4))
    with pytest.raises(ValueError, match="not present"):
        keyed.patch_condition(TensorDict({"b": torch.randn(1, 2)}, batch_size=[1]))
    with pytest.raises(ValueError, match="plain Tensor"):
        keyed.patch_condition(torch.randn(1, 1, 8, 8))
    patched = MultiDiffusionModel2D(Recorder(), (8, 8), condition_patch=True)
    patched.set_grid_patching((4, 4))
    with pytest.raises(ValueError, match="4D"):
        patched.patch_condition(torch.randn(1, 8, 8))
