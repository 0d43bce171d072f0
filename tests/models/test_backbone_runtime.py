"""Runtime features of both backbones: bf16 autocast, channels_last, torch.compile,
activation checkpointing and save / from_checkpoint round trips."""

import json

import pytest
import torch

from hpcdiff.core import Module
from hpcdiff.models import (
    DiffusionModelAdapter,
    DiT,
    SongUNet,
    SongUNetDiffusionModel,
    SongUNetPosEmbd,
)

UNET = dict(img_resolution=16, in_channels=3, out_channels=3, model_channels=16,
            channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8], label_dim=2)  # fmt: skip
DIT = dict(input_size=16, in_channels=3, patch_size=4, hidden_size=32, depth=2, num_heads=4,
           condition_dim=2)  # fmt: skip


def randomize_(model, scale=0.15):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return model


def inputs(batch=2):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(batch, 3, 16, 16, generator=g)
    return x, torch.rand(batch, generator=g) + 0.1, torch.randn(batch, 2, generator=g)


def relative_error(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("make", [lambda: SongUNet(**UNET, dropout=0.0), lambda: DiT(**DIT)])
def test_bf16_autocast_forward_and_backward(make):
    torch.manual_seed(0)
    net = randomize_(make()).train()
    x, t, y = inputs()
    reference = net(x, t, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x, t, y)
    assert out.dtype == torch.bfloat16
    assert relative_error(out, reference) < 5e-2
    out.float().square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all(), name


def test_unet_runs_on_bf16_inputs_with_float32_parameters():
    torch.manual_seed(0)
    net = randomize_(SongUNet(**UNET, dropout=0.0)).eval()
    x, t, y = inputs()
    out = net(x.bfloat16(), t.bfloat16(), y.bfloat16())
    assert out.dtype == torch.bfloat16 and relative_error(out, net(x, t, y)) < 5e-2


def test_unet_channels_last_matches_contiguous():
    torch.manual_seed(0)
    net = randomize_(SongUNet(**UNET, dropout=0.0))
    x, t, y = inputs()
    ref = net(x, t, y)
    ref.square().sum().backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters()}
    net.zero_grad()
    net = net.to(memory_format=torch.channels_last)
    out = net(x.contiguous(memory_format=torch.channels_last), t, y)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    out.square().sum().backward()
    for n, p in net.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], rtol=1e-3, atol=1e-4, msg=n)


def test_torch_compile_captures_the_unet_in_one_graph():
    torch.manual_seed(0)
    net = randomize_(SongUNet(**UNET, dropout=0.0))
    x, t, y = inputs()
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)
    out = compiled(x, t, y)
    torch.testing.assert_close(out, net(x, t, y), rtol=1e-5, atol=1e-6)
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_unet_activation_checkpointing_gives_identical_gradients():
    # Checkpointing keeps the RNG state, so even dropout masks are recomputed identically.
    grads, counts = [], []
    for level in (0, 1):
        torch.manual_seed(0)
        net = randomize_(SongUNet(**UNET, dropout=0.2, checkpoint_level=level)).train()
        calls = {"enc": 0, "dec": 0}
        net.enc["16x16_block0"].register_forward_pre_hook(
            lambda *a, c=calls: c.__setitem__("enc", c["enc"] + 1)
        )
        net.dec["8x8_in0"].register_forward_pre_hook(
            lambda *a, c=calls: c.__setitem__("dec", c["dec"] + 1)
        )
        torch.manual_seed(5)
        net(*inputs()).square().sum().backward()
        grads.append({n: p.grad for n, p in net.named_parameters()})
        counts.append(calls)
    # level 1: blocks above (16 >> 1) + 1 = 9 pixels wide are recomputed, the bottleneck not
    assert counts == [{"enc": 1, "dec": 1}, {"enc": 2, "dec": 1}]
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-6, atol=1e-7, msg=name)


def _args(model):
    """Constructor arguments as saved: nested Modules by their arguments, tuples as lists."""
    return {
        k: _args(v) if isinstance(v, Module) else json.loads(json.dumps(v))
        for k, v in model.init_args.items()
    }


def _round_trip(tmp_path, model, *args):
    model.eval()
    path = model.save(tmp_path / "model.mdlus")
    loaded = Module.from_checkpoint(path).eval()
    assert type(loaded) is type(model)
    assert _args(loaded) == _args(model)
    torch.testing.assert_close(loaded(*args), model(*args), rtol=0, atol=0)


def test_save_and_load_round_trips(tmp_path):
    torch.manual_seed(0)
    x, t, y = inputs()
    unet = randomize_(SongUNet(**{**UNET, "img_resolution": [16, 24]}))
    _round_trip(tmp_path, unet, x, t, y)
    dit = randomize_(DiT(**DIT, pos_embed="sinusoidal", rope=True))
    _round_trip(tmp_path, dit, x, t, y)
    pos_args = {**UNET, "in_channels": 3 + 2, "gridtype": "learnable", "N_grid_channels": 2}
    pos = randomize_(SongUNetPosEmbd(**pos_args))
    _round_trip(tmp_path, pos, x, t, y)


def test_adapters_save_their_backbones(tmp_path):
    torch.manual_seed(0)
    x, t, y = inputs()
    _round_trip(tmp_path, SongUNetDiffusionModel(randomize_(SongUNet(**UNET))), x, t, y)
    adapter = DiffusionModelAdapter(
        randomize_(SongUNet(**UNET)), time_arg="noise_labels", condition_arg="class_labels"
    )
    _round_trip(tmp_path, adapter, x, t, y)
