"""Named backbone sizes and the ``hpcdiff models`` command."""

import pytest
import torch

from hpcdiff.cli import main
from hpcdiff.models import DiT, SongUNet, count_parameters, create_model, model_names
from hpcdiff.models.registry import model_config


def test_named_sizes():
    names = model_names()
    assert len([n for n in names if n.startswith("DiT-")]) == 12
    family, args = model_config("DiT-XL/2")
    assert family == "DiT" and args == dict(hidden_size=1152, depth=28, num_heads=16, patch_size=2)
    assert model_config("SongUNet-NCSN++")[1]["encoder_type"] == "residual"
    for bad in ("DiT-M/4", "DiT-S/3", "UNet"):
        with pytest.raises(ValueError, match="DiT|unknown"):
            model_config(bad)


def test_create_model_and_meta_device_counts_agree():
    dit = create_model("DiT-S/8", resolution=(16, 32), in_channels=2, out_channels=1, depth=1)
    assert isinstance(dit, DiT) and dit.patch_size == (8, 8) and dit.out_channels == 1
    kw = dict(resolution=16, in_channels=2)
    unet = create_model("SongUNet-S", **kw)
    assert isinstance(unet, SongUNet)
    assert count_parameters("SongUNet-S", **kw) == unet.num_parameters()
    assert count_parameters("DiT-S/8", resolution=(16, 32), in_channels=2, out_channels=1,
                            depth=1) == dit.num_parameters()  # fmt: skip


def test_models_list_prints_every_size_with_its_parameter_count(capsys):
    assert main(["models", "--list", "--resolution", "32", "--in-channels", "4"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
    assert list(rows) == model_names()
    n = count_parameters("DiT-B/4", resolution=32, in_channels=4)
    assert rows["DiT-B/4"][1:] == ["DiT", f"{n:,}"]
    assert main(["models"]) == 2


def test_models_convert_imports_a_physicsnemo_checkpoint(tmp_path, capsys):
    import json
    import zipfile

    from hpcdiff.core import Module

    net = create_model("SongUNet-S", resolution=16, in_channels=1, num_blocks=1, channel_mult=[1])
    args = {k: list(v) if isinstance(v, tuple) else v for k, v in net.init_args.items()}
    src = tmp_path / "ref.mdlus"
    with zipfile.ZipFile(src, "w") as zf:
        spec = {"__name__": "SongUNet", "__module__": "physicsnemo.models.diffusion_unets",
                "__args__": args}  # fmt: skip
        zf.writestr("args.json", json.dumps(spec))
        with zf.open("model.pt", "w") as fh:
            torch.save(net.state_dict(), fh)
    assert main(["models", "--convert", str(src), str(tmp_path / "out.mdlus")]) == 0
    loaded = Module.from_checkpoint(tmp_path / "out.mdlus").eval()
    x, t = torch.randn(1, 1, 16, 16), torch.rand(1)
    torch.testing.assert_close(loaded(x, t), net.eval()(x, t), rtol=0, atol=0)
    assert main(["models", "--convert", str(tmp_path / "nope.mdlus"), "x.mdlus"]) == 2
    assert "not found" in capsys.readouterr().err
