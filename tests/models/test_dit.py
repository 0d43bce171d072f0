"""DiT: adaLN-Zero init, conditioning paths, odd/rectangular inputs, positions, parameter count."""

import pytest
import torch
from tensordict import TensorDict

from hpcdiff.diffusion import DiffusionModel
from hpcdiff.models import DiT
from hpcdiff.models.dit_layers import apply_rope, rope_2d, sincos_2d

SMALL = dict(patch_size=4, hidden_size=32, depth=2, num_heads=4)


def small(**kw) -> DiT:
    torch.manual_seed(0)
    return DiT(**{"input_size": 16, "in_channels": 3, **SMALL, **kw})


def randomize_(model, scale=0.1):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return model


def test_adaln_zero_init_gives_zero_output_and_identity_blocks():
    net = small(condition_dim=2)
    x, t = torch.randn(2, 3, 16, 16), torch.rand(2)
    out = net(x, t, torch.randn(2, 2))
    assert out.shape == x.shape and out.abs().max() == 0
    for block in net.blocks:
        assert block.adaptive_modulation[-1].weight.abs().max() == 0
        tokens = torch.randn(2, 16, 32)
        torch.testing.assert_close(block(tokens, torch.randn(2, 32)), tokens, rtol=0, atol=0)


def test_at_init_only_the_final_layer_receives_gradient():
    # With zero output projection and zero gates, d out / d theta vanishes for all earlier
    # parameters: the first step trains the final adaLN layer and projection only.
    net = small()
    net(torch.randn(2, 3, 16, 16), torch.rand(2)).sum().backward()
    for name, p in net.named_parameters():
        nonzero = p.grad is not None and p.grad.abs().sum() > 0
        assert nonzero == name.startswith("detokenizer.proj_layer.output_projection"), name


def test_gradients_reach_every_parameter_away_from_init():
    net = randomize_(small(condition_dim=2, rope=True))
    net(torch.randn(2, 3, 16, 16), torch.rand(2), torch.randn(2, 2)).square().sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    "kw, shape",
    [
        (dict(input_size=(8, 20)), (8, 20)),  # rectangular
        (dict(input_size=(13, 10)), (13, 10)),  # odd: padded to 16 x 12, cropped back
        (dict(pos_embed="sinusoidal"), (12, 28)),  # any size with fixed positions
        (dict(pos_embed="none", rope=True), (9, 7)),
        (dict(patch_size=(2, 4)), (16, 16)),
    ],
)
def test_output_shapes(kw, shape):
    net = randomize_(small(**kw))
    out = net(torch.randn(2, 3, *shape), torch.rand(2))
    assert out.shape == (2, 3, *shape) and torch.isfinite(out).all()


def test_odd_input_is_zero_padded_symmetrically():
    net = randomize_(small(input_size=(14, 15), pos_embed="none"))
    x = torch.randn(1, 3, 14, 15)
    padded = torch.nn.functional.pad(x, (0, 1, 1, 1))  # 16 x 16: left 0, right 1, top/bottom 1
    big = DiT(16, 3, pos_embed="none", **SMALL)
    big.load_state_dict(net.state_dict())
    torch.testing.assert_close(net(x, torch.ones(1)), big(padded, torch.ones(1))[..., 1:15, 0:15])


def test_vector_and_image_conditions():
    net = randomize_(small(in_channels=3 + 2 + 4, out_channels=3, condition_dim=5))
    assert isinstance(net, DiffusionModel)
    x, t = torch.randn(2, 3, 16, 16), torch.rand(2)
    img, pe, vec = torch.randn(2, 2, 16, 16), torch.randn(2, 4, 16, 16), torch.randn(2, 5)
    cond = TensorDict(
        {"positional_embedding": pe, "vec_b": vec[:, 3:], "img": img, "vec_a": vec[:, :3]},
        batch_size=[2],
    )
    out = net(x, t, cond)
    # same as concatenating images (sorted keys, positional embedding last) and vectors
    torch.testing.assert_close(out, net(torch.cat([x, img, pe], 1), t, vec))
    assert (net(x, t, cond.update({"vec_a": vec[:, :3] + 1})) - out).abs().max() > 1e-4


def test_bad_conditions_and_arguments_raise():
    net = small(condition_dim=5)
    x, t = torch.randn(2, 3, 16, 16), torch.rand(2)
    with pytest.raises(ValueError, match="condition_dim"):
        net(x, t, torch.randn(2, 4))
    with pytest.raises(ValueError, match="condition_dim"):
        small()(x, t, torch.randn(2, 5))
    with pytest.raises(ValueError, match="in_channels=3"):
        net(x, t, torch.randn(2, 1, 16, 16))
    with pytest.raises(ValueError, match="'t'"):
        net(x, torch.rand(3), torch.randn(2, 5))
    with pytest.raises(ValueError, match="learnable positional embedding"):
        net(torch.randn(2, 3, 8, 16), t, torch.randn(2, 5))
    with pytest.raises(ValueError, match="num_heads"):
        DiT(16, 3, hidden_size=30, num_heads=4)
    with pytest.raises(ValueError, match="pos_embed"):
        DiT(16, 3, pos_embed="rotary")


def test_sincos_positions_follow_mae_formula():
    pe = sincos_2d(2, 3, 8)  # (T=6, 8): rows [sin, cos] then columns [sin, cos], K=2
    w = torch.tensor([1.0, 1e-2])  # 10000 ** (-k / 2)
    row, col = 1, 2
    expected = torch.cat(
        [torch.sin(row * w), torch.cos(row * w), torch.sin(col * w), torch.cos(col * w)]
    )
    torch.testing.assert_close(pe[row * 3 + col], expected)


def test_rope_preserves_norms_and_depends_on_relative_positions_only():
    cos, sin = rope_2d(6, 6, 8)
    torch.manual_seed(0)
    q, k = torch.randn(8), torch.randn(8)
    rq, rk = apply_rope(q.expand(36, 8), cos, sin), apply_rope(k.expand(36, 8), cos, sin)
    torch.testing.assert_close(rq.norm(dim=1), q.norm().expand(36))
    score = rq @ rk.T  # (36, 36) over positions (i, j) -> 6 i + j
    # <R(p) q, R(p') k> for p=(1,2), p'=(3,1) equals that for p=(2,4), p'=(4,3): same offset
    torch.testing.assert_close(score[1 * 6 + 2, 3 * 6 + 1], score[2 * 6 + 4, 4 * 6 + 3])
    assert (score[1 * 6 + 2, 3 * 6 + 1] - score[1 * 6 + 2, 3 * 6 + 2]).abs() > 1e-4


def _count_dit(H, W, C, p, D, depth, cond=0, mlp=4):
    lin = lambda i, o: i * o + o  # noqa: E731
    T = (H // p) * (W // p)
    tokenizer = C * p * p * D + D + T * D
    timestep = lin(D, 2 * D) + lin(2 * D, D) + cond * D
    block = lin(D, 3 * D) + lin(D, D) + lin(D, mlp * D) + lin(mlp * D, D) + lin(D, 6 * D)
    final = lin(D, 2 * D) + lin(D, p * p * C)
    return tokenizer + timestep + depth * block + final


def test_parameter_count_matches_formula_and_physicsnemo():
    # 181_872: physicsnemo DiT(input_size=16, in_channels=3, patch_size=4, hidden_size=64,
    # depth=2, num_heads=4, condition_dim=5), counted once with nvidia-physicsnemo 2.2.2.
    net = DiT(16, 3, patch_size=4, hidden_size=64, depth=2, num_heads=4, condition_dim=5)
    assert net.num_parameters() == _count_dit(16, 16, 3, 4, 64, 2, cond=5) == 181_872


def test_activation_checkpointing_gives_identical_gradients():
    grads = []
    for ckpt in (False, True):
        net = randomize_(small(activation_checkpointing=ckpt, rope=True))
        calls = []
        net.blocks[0].register_forward_pre_hook(lambda *a, calls=calls: calls.append(1))
        net(torch.ones(2, 3, 16, 16), torch.ones(2)).square().sum().backward()
        assert len(calls) == (2 if ckpt else 1)  # recomputed in the backward pass
        grads.append({n: p.grad for n, p in net.named_parameters()})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-6, atol=1e-7, msg=name)


def test_integer_timesteps_embed_like_floats():
    net = randomize_(small())
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(net(x, torch.tensor([3, 500])), net(x, torch.tensor([3.0, 500.0])))
