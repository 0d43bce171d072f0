"""``load_physicsnemo``: PhysicsNeMo ``.mdlus`` checkpoints (zip and legacy tar) built in the test
from known state dicts, in the layout PhysicsNeMo's ``Module.save`` writes."""

import io
import json
import tarfile
import zipfile

import pytest
import torch

from hpcdiff.models import DiT, SongUNet, SongUNetPosEmbd, load_physicsnemo

UNET_ARGS = dict(img_resolution=[16, 24], in_channels=3, out_channels=2, label_dim=2,
                 augment_dim=0, model_channels=16, channel_mult=[1, 2], channel_mult_emb=4,
                 num_blocks=1, attn_resolutions=[8], dropout=0.0, label_dropout=0.0,
                 embedding_type="positional", channel_mult_noise=1, encoder_type="standard",
                 decoder_type="standard", resample_filter=[1, 1], checkpoint_level=0,
                 additive_pos_embed=False, bottleneck_attention=True, use_apex_gn=False,
                 act="silu", profile_mode=False, amp_mode=False)  # fmt: skip
DIT_ARGS = dict(input_size=16, in_channels=3, patch_size=[4, 4], tokenizer="patch_embed_2d",
                detokenizer="proj_reshape_2d", out_channels=None, hidden_size=32, depth=2,
                num_heads=4, mlp_ratio=4.0, attention_backend="timm", layernorm_backend="torch",
                condition_dim=3, conditioning_embedder="dit", dit_initialization=True,
                conditioning_embedder_kwargs={}, tokenizer_kwargs={}, detokenizer_kwargs={},
                block_kwargs={}, attn_kwargs={}, drop_path_rates=None,
                force_tokenization_fp32=False, use_nan_mask_tokens=False)  # fmt: skip
MODULES = {
    "SongUNet": "physicsnemo.models.diffusion_unets.song_unet",
    "SongUNetPosEmbd": "physicsnemo.models.diffusion_unets.song_unet",
    "DiT": "physicsnemo.models.dit.dit",
}
EXECUTED = []


def randomize_(model):
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def members(name, args, state) -> dict[str, bytes]:
    weights = io.BytesIO()
    torch.save(state, weights)
    spec = {"__name__": name, "__module__": MODULES.get(name, "physicsnemo.models.x"),
            "__args__": args}  # fmt: skip
    meta = {"physicsnemo_version": "2.2.2", "mdlus_file_version": "0.1.0"}
    return {"model.pt": weights.getvalue(), "args.json": json.dumps(spec).encode(),
            "metadata.json": json.dumps(meta).encode()}  # fmt: skip


def write_zip(path, files):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def write_tar(path, files):
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def unet_and_inputs():
    torch.manual_seed(0)
    net = randomize_(SongUNet(**UNET_ARGS)).eval()
    x, t, y = torch.randn(2, 3, 16, 24), torch.rand(2), torch.randn(2, 2)
    return net, (x, t, y)


def test_zip_checkpoint_gives_the_same_model(tmp_path):
    net, args = unet_and_inputs()
    path = write_zip(tmp_path / "a.mdlus", members("SongUNet", UNET_ARGS, net.state_dict()))
    loaded = load_physicsnemo(path).eval()
    assert type(loaded) is SongUNet
    torch.testing.assert_close(loaded(*args), net(*args), rtol=0, atol=0)


def test_legacy_tar_with_old_key_names_and_no_frequency_table(tmp_path):
    net, args = unet_and_inputs()
    state = {}
    for key, value in net.state_dict().items():
        if key == "map_noise.freqs":  # older releases did not save it
            continue
        state[key.replace(".attn.norm.", ".norm2.").replace(".attn.", ".")] = value
    assert "enc.8x8_block0.qkv.weight" in state and "enc.8x8_block0.norm2.bias" in state
    path = write_tar(tmp_path / "legacy.mdlus", members("SongUNet", UNET_ARGS, state))
    loaded = load_physicsnemo(path).eval()
    torch.testing.assert_close(loaded(*args), net(*args), rtol=0, atol=0)


def test_songunet_pos_embd_and_dit(tmp_path):
    pos_args = {**UNET_ARGS, "in_channels": 3 + 4, "gridtype": "sinusoidal", "N_grid_channels": 4,
                "lead_time_mode": False, "lead_time_channels": None, "lead_time_steps": 9,
                "prob_channels": []}  # fmt: skip
    kwargs = {k: v for k, v in pos_args.items() if not k.startswith(("lead", "prob"))}
    with pytest.warns(FutureWarning):
        pos = randomize_(SongUNetPosEmbd(**kwargs)).eval()
    path = write_zip(tmp_path / "p.mdlus", members("SongUNetPosEmbd", pos_args, pos.state_dict()))
    x, t, y = torch.randn(2, 3, 16, 24), torch.rand(2), torch.randn(2, 2)
    torch.testing.assert_close(load_physicsnemo(path).eval()(x, t, y), pos(x, t, y))

    torch.manual_seed(0)
    dit = randomize_(DiT(16, 3, patch_size=4, hidden_size=32, depth=2, num_heads=4,
                         condition_dim=3))  # fmt: skip
    # older releases kept the timestep embedder at the root
    legacy = {k.replace("conditioning_embedder.t_", "t_"): v for k, v in dit.state_dict().items()}
    assert "t_embedder.mlp.0.weight" in legacy
    path = write_tar(tmp_path / "d.mdlus", members("DiT", DIT_ARGS, legacy))
    x, c = torch.randn(2, 3, 16, 16), torch.randn(2, 3)
    torch.testing.assert_close(load_physicsnemo(path)(x, t, c), dit(x, t, c), rtol=0, atol=0)


def test_refuses_unknown_classes_and_unsupported_variants(tmp_path):
    net, _ = unet_and_inputs()
    state = net.state_dict()
    path = write_zip(tmp_path / "fno.mdlus", members("FNO", {"in_channels": 3}, state))
    with pytest.raises(ValueError, match=r"fno\.mdlus.*'FNO'"):
        load_physicsnemo(path)
    spoof = members("SongUNet", UNET_ARGS, state)
    spoof["args.json"] = spoof["args.json"].replace(b"physicsnemo.models", b"mypkg.models")
    with pytest.raises(ValueError, match="mypkg"):
        load_physicsnemo(write_zip(tmp_path / "spoof.mdlus", spoof))
    natten = {**DIT_ARGS, "attention_backend": "natten2d"}
    with pytest.raises(ValueError, match="attention_backend='natten2d'"):
        load_physicsnemo(write_zip(tmp_path / "n.mdlus", members("DiT", natten, {})))
    lead = {**UNET_ARGS, "lead_time_mode": True, "lead_time_channels": 4}
    with pytest.raises(ValueError, match="lead-time"):
        load_physicsnemo(write_zip(tmp_path / "l.mdlus", members("SongUNetPosEmbd", lead, {})))
    extra = {**UNET_ARGS, "new_feature": 1}
    with pytest.raises(ValueError, match="new_feature"):
        load_physicsnemo(write_zip(tmp_path / "e.mdlus", members("SongUNet", extra, state)))
    bad_weights = {k: v for k, v in state.items() if "map_label" not in k}
    with pytest.raises(ValueError, match="map_label"):
        load_physicsnemo(
            write_zip(tmp_path / "w.mdlus", members("SongUNet", UNET_ARGS, bad_weights))
        )


def test_refuses_unsafe_or_malformed_archives(tmp_path):
    net, _ = unet_and_inputs()
    files = members("SongUNet", UNET_ARGS, net.state_dict())
    traversal = {**files, "../../escape.txt": b"x"}
    with pytest.raises(ValueError, match="unsafe"):
        load_physicsnemo(write_tar(tmp_path / "t.mdlus", traversal))
    assert not (tmp_path.parent / "escape.txt").exists()
    absolute = {**files, "/tmp/abs.txt": b"x"}
    with pytest.raises(ValueError, match="unsafe"):
        load_physicsnemo(write_zip(tmp_path / "z.mdlus", absolute))
    link = tmp_path / "link.mdlus"
    with tarfile.open(link, "w") as tar:
        info = tarfile.TarInfo("model.pt")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(ValueError, match="not a file"):
        load_physicsnemo(link)
    no_weights = {k: v for k, v in files.items() if k != "model.pt"}
    with pytest.raises(ValueError, match="model.pt"):
        load_physicsnemo(write_zip(tmp_path / "m.mdlus", no_weights))
    (tmp_path / "plain.mdlus").write_bytes(b"not an archive")
    with pytest.raises(ValueError, match="neither zip nor tar"):
        load_physicsnemo(tmp_path / "plain.mdlus")
    with pytest.raises(FileNotFoundError):
        load_physicsnemo(tmp_path / "missing.mdlus")


def _mark_executed():
    EXECUTED.append(True)
    return torch.zeros(1)


class _Payload:
    def __reduce__(self):
        return (_mark_executed, ())


def test_weights_are_read_without_running_code_from_the_file(tmp_path):
    files = members("SongUNet", UNET_ARGS, {"map_noise.freqs": _Payload()})
    with pytest.raises(ValueError, match="not a plain tensor state dict"):
        load_physicsnemo(write_zip(tmp_path / "evil.mdlus", files))
    assert EXECUTED == []
