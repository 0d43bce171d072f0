"""Adapters from backbone signatures to ``DiffusionModel`` and the condition conventions."""

import pytest
import torch
from tensordict import TensorDict

from hpcdiff.core import Module
from hpcdiff.diffusion import DiffusionModel
from hpcdiff.models import DiffusionModelAdapter, SongUNet, SongUNetDiffusionModel, split_condition

ARCH = dict(model_channels=16, channel_mult=[1], num_blocks=1, attn_resolutions=[], dropout=0.0)


def unet(in_channels, label_dim=0):
    torch.manual_seed(0)
    net = SongUNet(img_resolution=8, in_channels=in_channels, out_channels=1, label_dim=label_dim,
                   **ARCH)  # fmt: skip
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.2)
    return net.eval()


def test_split_condition_by_rank_with_positional_embedding_last():
    a, b, pe = torch.randn(2, 1, 4, 4), torch.randn(2, 2, 4, 4), torch.randn(2, 3, 4, 4)
    v, s = torch.randn(2, 3), torch.randn(2)
    td = TensorDict({"positional_embedding": pe, "z_img": b, "a_img": a, "vec": v, "scalar": s},
                    batch_size=[2])  # fmt: skip
    images, vector = split_condition(td)
    assert [i.shape[1] for i in images] == [1, 2, 3]
    torch.testing.assert_close(vector, torch.cat([s[:, None], v], 1))  # "scalar" < "vec"
    images, vector = split_condition(td, image_keys=["z_img"], vector_keys=["vec"])
    assert len(images) == 1 and images[0] is b and vector is v
    assert split_condition(None) == ([], None)
    assert split_condition(a)[0][0] is a and split_condition(v)[1] is v
    with pytest.raises(ValueError, match="'bad'"):
        split_condition({"bad": torch.randn(2, 3, 4)})
    with pytest.raises(TypeError, match="condition"):
        split_condition([a])
    with pytest.raises(ValueError, match="'vec'"):
        split_condition(td, image_keys=["vec"])


def test_songunet_diffusion_model_concatenates_images_and_labels():
    net = unet(in_channels=1 + 2 + 4, label_dim=3)
    model = SongUNetDiffusionModel(net)
    assert isinstance(model, DiffusionModel)
    x, t = torch.randn(2, 1, 8, 8), torch.rand(2)
    img, pe, lab = torch.randn(2, 2, 8, 8), torch.randn(2, 4, 8, 8), torch.randn(2, 3)
    cond = TensorDict({"positional_embedding": pe, "labels": lab, "coarse": img}, batch_size=[2])
    expected = net(torch.cat([x, img, pe], 1), t, lab)
    torch.testing.assert_close(model(x, t, cond), expected, rtol=0, atol=0)
    # a plain image tensor condition, and explicit keys in a chosen order
    torch.testing.assert_close(
        SongUNetDiffusionModel(unet(1 + 2))(x, t, img), unet(1 + 2)(torch.cat([x, img], 1), t)
    )
    ordered = SongUNetDiffusionModel(net, image_keys=["positional_embedding", "coarse"],
                                     vector_keys=["labels"])  # fmt: skip
    torch.testing.assert_close(ordered(x, t, cond), net(torch.cat([x, pe, img], 1), t, lab))


def test_seed_style_adapter_via_the_generic_helper():
    net = unet(in_channels=1, label_dim=2)
    model = DiffusionModelAdapter(net, time_arg="noise_labels", condition_arg="class_labels")
    x, t, y = torch.randn(2, 1, 8, 8), torch.rand(2), torch.randn(2, 2)
    torch.testing.assert_close(model(x, t, y), net(x, noise_labels=t, class_labels=y))


def test_generic_adapter_unpacks_tensordicts_and_wraps_plain_torch_modules(tmp_path):
    class External(torch.nn.Module):  # a backbone with its own signature
        def __init__(self, channels: int):
            super().__init__()
            self.conv = torch.nn.Conv2d(channels, 1, 1)

        def forward(self, image, sigma, scale=None):
            return self.conv(image) * sigma.view(-1, 1, 1, 1) * scale.view(-1, 1, 1, 1)

    Wrapped = Module.from_torch(External, name="AdapterTestExternal")
    model = DiffusionModelAdapter(Wrapped(channels=3), time_arg="sigma", concat_keys=["img"],
                                  condition_keys={"s": "scale"})  # fmt: skip
    x, t = torch.randn(2, 1, 4, 4), torch.rand(2)
    cond = TensorDict({"img": torch.randn(2, 2, 4, 4), "s": torch.rand(2)}, batch_size=[2])
    expected = model.net(torch.cat([x, cond["img"]], 1), sigma=t, scale=cond["s"])
    torch.testing.assert_close(model(x, t, cond), expected)
    model.save(tmp_path / "m.mdlus")
    loaded = Module.from_checkpoint(tmp_path / "m.mdlus")
    torch.testing.assert_close(loaded(x, t, cond), expected)
    with pytest.raises(TypeError, match="TensorDict"):
        model(x, t, torch.randn(2, 2))
