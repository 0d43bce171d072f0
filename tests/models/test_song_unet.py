"""SongUNet: layer formulas, shapes, conditioning, validation and parameter count."""

import math

import pytest
import torch
import torch.nn.functional as F

from hpcdiff.models import SongUNet
from hpcdiff.models.layers import Conv2d, FourierEmbedding, GroupNorm, PositionalEmbedding

TINY = dict(model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8])


def tiny(**kw) -> SongUNet:
    torch.manual_seed(0)
    args = dict(img_resolution=16, in_channels=3, out_channels=2, dropout=0.0, **TINY)
    return SongUNet(**{**args, **kw})


def randomize_(model: torch.nn.Module, scale: float = 0.2) -> torch.nn.Module:
    """Replace the (mostly near-zero) initial weights so every path affects the output."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return model


# ------------------------------------------------------------------------------------------
# Layers: closed forms
# ------------------------------------------------------------------------------------------
def test_group_norm_train_is_biased_and_eval_is_unbiased_group_variance():
    torch.manual_seed(0)
    gn = GroupNorm(8, eps=1e-6)  # 2 groups of 4 channels
    with torch.no_grad():
        gn.weight.uniform_(0.5, 1.5)
        gn.bias.uniform_(-1, 1)
    x = torch.randn(3, 8, 5, 7)
    g = x.reshape(3, 2, -1)
    mean = g.mean(-1, keepdim=True)
    w, b = gn.weight.view(1, 8, 1, 1), gn.bias.view(1, 8, 1, 1)
    for unbiased, mode in ((False, gn.train), (True, gn.eval)):
        mode()
        var = g.var(-1, keepdim=True, unbiased=unbiased)
        expected = ((g - mean) / torch.sqrt(var + 1e-6)).reshape_as(x) * w + b
        torch.testing.assert_close(gn(x), expected, rtol=1e-5, atol=1e-5)


def test_group_norm_group_count_and_invalid_channels():
    assert GroupNorm(256).num_groups == 32 and GroupNorm(16).num_groups == 4
    assert GroupNorm(3).num_groups == 1
    with pytest.raises(ValueError, match="num_channels=18"):
        GroupNorm(18)  # 5 groups of >= 4 channels do not divide 18


@pytest.mark.parametrize("taps", [[1, 1], [1, 3, 3, 1]])
def test_conv_resampling_equals_the_fir_filter(taps):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 6)
    f = torch.tensor(taps, dtype=torch.float32)
    f = torch.outer(f, f) / f.sum() ** 2
    pad = (len(taps) - 1) // 2
    kernel = f.expand(3, 1, -1, -1)
    down = Conv2d(3, 3, kernel=0, down=True, resample_filter=taps)
    up = Conv2d(3, 3, kernel=0, up=True, resample_filter=taps)
    expected_down = F.conv2d(x, kernel, groups=3, stride=2, padding=pad)
    expected_up = F.conv_transpose2d(x, 4 * kernel, groups=3, stride=2, padding=pad)
    torch.testing.assert_close(down(x), expected_down)
    torch.testing.assert_close(up(x), expected_up)
    assert down(x).shape == (2, 3, 4, 3) and up(x).shape == (2, 3, 16, 12)


def test_box_filter_is_mean_pooling_and_nearest_upsampling():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    down = Conv2d(1, 1, kernel=0, down=True)(x)
    assert down[0, 0, 0, 0] == (0 + 1 + 4 + 5) / 4
    up = Conv2d(1, 1, kernel=0, up=True)(x)
    torch.testing.assert_close(up[0, 0, ::2, ::2], x[0, 0], rtol=0, atol=0)
    torch.testing.assert_close(up[0, 0, 1::2, 1::2], x[0, 0], rtol=0, atol=0)


def test_noise_embeddings_follow_their_formulas():
    t = torch.tensor([0.0, 0.5, 3.0])
    pe = PositionalEmbedding(8, endpoint=True)
    w = (1 / 10000) ** (torch.arange(4) / 3)  # endpoint: exponents 0, 1/3, 2/3, 1
    torch.testing.assert_close(
        pe(t), torch.cat([torch.cos(t[:, None] * w), torch.sin(t[:, None] * w)], 1)
    )
    fe = FourierEmbedding(8)
    arg = t[:, None] * (2 * math.pi * fe.freqs)
    torch.testing.assert_close(fe(t), torch.cat([arg.cos(), arg.sin()], 1))


# ------------------------------------------------------------------------------------------
# Shapes and validation
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kw, shape",
    [
        (dict(img_resolution=[16, 24]), (16, 24)),  # rectangular
        (dict(), (8, 32)),  # other sizes than img_resolution
        (dict(channel_mult=[1], attn_resolutions=[]), (15, 9)),  # one level: odd sizes
        (dict(encoder_type="skip", decoder_type="skip", resample_filter=[1, 3, 3, 1]), (16, 12)),
        (dict(encoder_type="residual", embedding_type="fourier", channel_mult_noise=2), (16, 8)),
        (dict(embedding_type="zero", bottleneck_attention=False), (16, 16)),
    ],
)
def test_output_shapes(kw, shape):
    net = tiny(**kw)
    out = net(torch.randn(2, 3, *shape), torch.rand(2))
    assert out.shape == (2, 2, *shape)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda n: n(torch.randn(2, 3, 15, 16), torch.rand(2)), "spatial dimensions"),
        (lambda n: n(torch.randn(3, 16, 16), torch.rand(2)), "4D"),
        (lambda n: n(torch.randn(2, 3, 16, 16), torch.rand(3)), "noise_labels"),
        (lambda n: n(torch.randn(2, 3, 16, 16), torch.rand(2, 1)), "noise_labels"),
    ],
)
def test_bad_inputs_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call(tiny())


def test_bad_labels_and_constructor_choices():
    net = tiny(label_dim=4, augment_dim=2)
    x, t = torch.randn(2, 3, 16, 16), torch.rand(2)
    with pytest.raises(ValueError, match="class_labels"):
        net(x, t, torch.randn(2, 3))
    with pytest.raises(ValueError, match="augment_labels"):
        net(x, t, torch.randn(2, 4), torch.randn(2, 3))
    with pytest.raises(TypeError, match="class_labels"):
        net(x, t, None)
    for arg in ("embedding_type", "encoder_type", "decoder_type"):
        with pytest.raises(ValueError, match=arg):
            tiny(**{arg: "nope"})


def test_additive_positional_embedding_needs_the_full_resolution():
    net = tiny(additive_pos_embed=True)
    assert net.spatial_emb.shape == (1, 16, 16, 16)
    assert net(torch.randn(1, 3, 16, 16), torch.rand(1)).shape == (1, 2, 16, 16)
    with pytest.raises(ValueError, match="additive_pos_embed"):
        net(torch.randn(1, 3, 8, 8), torch.rand(1))


# ------------------------------------------------------------------------------------------
# Conditioning
# ------------------------------------------------------------------------------------------
def test_noise_class_and_augment_labels_all_change_the_output():
    net = randomize_(tiny(label_dim=4, augment_dim=2)).eval()
    x, t = torch.randn(2, 3, 16, 16), torch.rand(2)
    y, a = torch.randn(2, 4), torch.randn(2, 2)
    base = net(x, t, y, a)
    for other in (net(x, t + 1, y, a), net(x, t, y + 1, a), net(x, t, y, a + 1)):
        assert (other - base).abs().max() > 1e-3
    # a single noise level broadcasts over the batch
    torch.testing.assert_close(net(x, t[:1], y, a), net(x, t[:1].expand(2), y, a))


def test_label_dropout_one_drops_every_class_label_in_training_only():
    net = randomize_(tiny(label_dim=4, label_dropout=1.0))
    x, t, y = torch.randn(2, 3, 16, 16), torch.rand(2), torch.randn(2, 4)
    net.train()
    torch.testing.assert_close(net(x, t, y), net(x, t, torch.zeros(2, 4)))
    net.eval()
    assert (net(x, t, y) - net(x, t, torch.zeros(2, 4))).abs().max() > 1e-3


# ------------------------------------------------------------------------------------------
# Gradients and parameter count
# ------------------------------------------------------------------------------------------
def test_gradients_reach_every_parameter():
    net = tiny(label_dim=3, encoder_type="residual", decoder_type="skip").train()
    net(torch.randn(2, 3, 16, 16), torch.rand(2), torch.randn(2, 3)).square().sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def _count_songunet(res, cin, cout, mc=128, mult=(1, 2, 2, 2), emb_mult=4, nb=4, attn=(16,)):
    """SongUNet parameters from the layer formulas (standard encoder/decoder, positional)."""
    conv = lambda i, o, k: o * i * k * k + o  # noqa: E731
    gn = lambda c: 2 * c  # noqa: E731
    emb = mc * emb_mult

    def block(i, o, resample=False, att=False):
        n = gn(i) + conv(i, o, 3) + (emb * o + o) + gn(o) + conv(o, o, 3)
        n += conv(i, o, 1) if (i != o or resample) else 0
        return n + (gn(o) + conv(o, 3 * o, 1) + conv(o, o, 1) if att else 0)

    total = (mc * emb + emb) + (emb * emb + emb)  # map_layer0, map_layer1
    skips, c = [mc], mc
    total += conv(cin, mc, 3)
    for level, m in enumerate(mult):
        if level:
            total += block(c, c, resample=True)
            skips.append(c)
        for _ in range(nb):
            total += block(c, mc * m, att=(res >> level) in attn)
            c = mc * m
            skips.append(c)
    for level, m in reversed(list(enumerate(mult))):
        if level == len(mult) - 1:
            total += block(c, c, att=True) + block(c, c)
        else:
            total += block(c, c, resample=True)
        for idx in range(nb + 1):
            total += block(c + skips.pop(), mc * m, att=idx == nb and (res >> level) in attn)
            c = mc * m
    return total + gn(c) + conv(c, cout, 3)


def test_parameter_count_of_the_default_64x64_model_matches_physicsnemo():
    # 61_804_419 = sum(p.numel() for p in physicsnemo SongUNet(img_resolution=64,
    # in_channels=3, out_channels=3).parameters()), run once with nvidia-physicsnemo 2.2.2.
    reference = 61_804_419
    assert _count_songunet(64, 3, 3) == reference
    with torch.device("meta"):  # no memory for 62 M parameters
        net = SongUNet(img_resolution=64, in_channels=3, out_channels=3)
    assert net.num_parameters() == reference
    assert net.init_args["channel_mult"] == (1, 2, 2, 2) and net.init_args["dropout"] == 0.1
