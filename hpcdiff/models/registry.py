"""Named backbone sizes: DiT-S/B/L/XL with patch 2, 4, 8 (Peebles & Xie 2023, Table 1) and UNets."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from hpcdiff.core import Module

# (hidden_size, depth, num_heads) of Peebles & Xie 2023, Table 1.
DIT_SIZES = {"S": (384, 12, 6), "B": (768, 12, 12), "L": (1024, 24, 16), "XL": (1152, 28, 16)}
DIT_PATCHES = (2, 4, 8)

_DDPMPP = dict(
    model_channels=128,
    channel_mult=[2, 2, 2],
    num_blocks=4,
    attn_resolutions=[16],
    dropout=0.13,
    embedding_type="positional",
    channel_mult_noise=1,
    encoder_type="standard",
    decoder_type="standard",
    resample_filter=[1, 1],
)
UNET_SIZES: dict[str, dict[str, Any]] = {
    # A small UNet for quick experiments and CPU tests.
    "SongUNet-S": dict(
        model_channels=32, channel_mult=[1, 2, 2], num_blocks=2, attn_resolutions=[16]
    ),
    # PhysicsNeMo's SongUNet defaults.
    "SongUNet-B": dict(
        model_channels=128, channel_mult=[1, 2, 2, 2], num_blocks=4, attn_resolutions=[16]
    ),
    # EDM's DDPM++ and NCSN++ (Karras et al. 2022, Appendix F.2).
    "SongUNet-DDPM++": _DDPMPP,
    "SongUNet-NCSN++": {
        **_DDPMPP,
        "embedding_type": "fourier",
        "channel_mult_noise": 2,
        "encoder_type": "residual",
        "resample_filter": [1, 3, 3, 1],
    },
}


def model_names() -> list[str]:
    """All named sizes, UNets first.

    >>> model_names()[:2], model_names()[-1]
    (['SongUNet-S', 'SongUNet-B'], 'DiT-XL/8')
    """
    dits = [f"DiT-{s}/{p}" for s in DIT_SIZES for p in DIT_PATCHES]
    return list(UNET_SIZES) + dits


def model_config(name: str) -> tuple[str, dict[str, Any]]:
    """Family (``"DiT"`` or ``"SongUNet"``) and constructor arguments of a named size."""
    if name in UNET_SIZES:
        return "SongUNet", dict(UNET_SIZES[name])
    size, _, patch = name.removeprefix("DiT-").partition("/")
    if name.startswith("DiT-") and size in DIT_SIZES and patch.isdigit():
        if int(patch) not in DIT_PATCHES:
            raise ValueError(f"unknown DiT patch size in {name!r}; choose from {DIT_PATCHES}")
        hidden, depth, heads = DIT_SIZES[size]
        return "DiT", dict(hidden_size=hidden, depth=depth, num_heads=heads, patch_size=int(patch))
    raise ValueError(f"unknown model name {name!r}; choose from {model_names()}")


def create_model(
    name: str,
    resolution: int | Sequence[int] = 64,
    in_channels: int = 3,
    out_channels: int | None = None,
    **overrides: Any,
) -> Module:
    """Build a named backbone for images of ``resolution`` with the given channels.

    >>> create_model("DiT-S/8", resolution=32, depth=1).num_parameters()
    3700800
    """
    family, args = model_config(name)
    out_channels = out_channels or in_channels
    if family == "DiT":
        from hpcdiff.models.dit import DiT

        args.update(input_size=resolution, in_channels=in_channels, out_channels=out_channels)
        return DiT(**{**args, **overrides})
    from hpcdiff.models.song_unet import SongUNet

    args.update(img_resolution=resolution, in_channels=in_channels, out_channels=out_channels)
    return SongUNet(**{**args, **overrides})


def count_parameters(name: str, **kwargs: Any) -> int:
    """Parameter count of ``create_model(name, **kwargs)``, built on the meta device (no memory)."""
    with torch.device("meta"):
        return create_model(name, **kwargs).num_parameters()
