"""SongUNet: the DDPM++ / NCSN++ UNet of Song et al. 2021 as used by EDM, CorrDiff and StormCast."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from hpcdiff.core import Module
from hpcdiff.models.layers import Conv2d, FourierEmbedding, GroupNorm, Linear, PositionalEmbedding
from hpcdiff.models.unet_block import UNetBlock

_EMBEDDINGS = ("fourier", "positional", "zero")
_ENCODERS = ("standard", "skip", "residual")
_DECODERS = ("standard", "skip")


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"Invalid {name}: {value!r}. Must be one of {list(choices)}.")


def _block_kwargs(emb_channels: int, dropout: float, resample_filter, act: str) -> dict:
    """UNetBlock settings of DDPM++ / NCSN++ (Karras et al. 2022, Appendix F.2)."""
    xavier = "xavier_uniform"
    return dict(
        emb_channels=emb_channels,
        num_heads=1,
        dropout=dropout,
        skip_scale=math.sqrt(0.5),
        eps=1e-6,
        resample_filter=list(resample_filter),
        resample_proj=True,
        adaptive_scale=False,
        init={"init_mode": xavier},
        init_zero={"init_mode": xavier, "init_weight": 1e-5},
        init_attn={"init_mode": xavier, "init_weight": math.sqrt(0.2)},
        act=act,
    )


class SongUNet(Module):
    """DDPM++ (positional embedding, standard encoder) / NCSN++ (Fourier, residual) UNet.

    Song et al. 2021 ("Score-based generative modeling through SDEs"), as restated by Karras et
    al. 2022, Appendix F.2. Constructor arguments, defaults and the state dict match
    PhysicsNeMo's ``SongUNet``; the noise, class and augmentation labels are embedded, summed
    and injected into every block; image conditions are concatenated to ``x`` by the caller.

    Parameters
    ----------
    img_resolution : int or [H, W]
        Resolution used to name the levels, place attention and size ``additive_pos_embed``.
    in_channels, out_channels : int
        Channels of the input (state plus concatenated conditions) and of the output.
    label_dim, augment_dim : int
        Sizes of the vector-valued class / augmentation labels (0: none).
    model_channels, channel_mult, channel_mult_emb, channel_mult_noise, num_blocks : int
        Width of level ``i`` is ``model_channels * channel_mult[i]``; embedding width is
        ``model_channels * channel_mult_emb``; ``num_blocks`` blocks per level.
    attn_resolutions : list of int
        Feature-map heights at which blocks get self-attention.
    checkpoint_level : int
        Activation checkpointing of the blocks whose resolution exceeds
        ``sqrt(H W) >> checkpoint_level`` (0: off).
    use_apex_gn, act, profile_mode, amp_mode
        Accepted for checkpoint compatibility; normalization always runs through PyTorch
        (``use_apex_gn`` converts the input to channels_last), parameters follow the input
        dtype, autocast works either way, and profiler ranges come from ``hpcdiff.nvtx``.

    >>> net = SongUNet(img_resolution=16, in_channels=2, out_channels=2, model_channels=16,
    ...                channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8])
    >>> net(torch.randn(3, 2, 16, 24), torch.rand(3), None).shape
    torch.Size([3, 2, 16, 24])
    """

    def __init__(
        self,
        img_resolution: int | Sequence[int],
        in_channels: int,
        out_channels: int,
        label_dim: int = 0,
        augment_dim: int = 0,
        model_channels: int = 128,
        channel_mult: Sequence[int] = (1, 2, 2, 2),
        channel_mult_emb: int = 4,
        num_blocks: int = 4,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.10,
        label_dropout: float = 0.0,
        embedding_type: str = "positional",
        channel_mult_noise: int = 1,
        encoder_type: str = "standard",
        decoder_type: str = "standard",
        resample_filter: Sequence[int] = (1, 1),
        checkpoint_level: int = 0,
        additive_pos_embed: bool = False,
        bottleneck_attention: bool = True,
        use_apex_gn: bool = False,
        act: str = "silu",
        profile_mode: bool = False,
        amp_mode: bool = False,
    ) -> None:
        _check_choice("embedding_type", embedding_type, _EMBEDDINGS)
        _check_choice("encoder_type", encoder_type, _ENCODERS)
        _check_choice("decoder_type", decoder_type, _DECODERS)
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.label_dim, self.augment_dim, self.label_dropout = label_dim, augment_dim, label_dropout
        self.embedding_type, self.use_apex_gn = embedding_type, use_apex_gn
        self.img_resolution = img_resolution
        if isinstance(img_resolution, int):
            self.img_shape_y = self.img_shape_x = img_resolution
        else:
            self.img_shape_y, self.img_shape_x = int(img_resolution[0]), int(img_resolution[1])
        self._num_levels = len(channel_mult)
        self._input_shape_mult = 2 ** (self._num_levels - 1)
        self.checkpoint_threshold = (
            math.isqrt(self.img_shape_y * self.img_shape_x) >> checkpoint_level
        ) + 1
        self.emb_channels = model_channels * channel_mult_emb

        self.additive_pos_embed = additive_pos_embed
        if additive_pos_embed:
            self.spatial_emb = nn.Parameter(
                torch.empty(1, model_channels, self.img_shape_y, self.img_shape_x)
            )
            nn.init.trunc_normal_(self.spatial_emb, std=0.02)

        block_kwargs = _block_kwargs(self.emb_channels, dropout, resample_filter, act)
        self.model_channels, self.num_blocks = model_channels, num_blocks
        self.channel_mult, self.attn_resolutions = list(channel_mult), list(attn_resolutions)
        self.resample_filter = list(resample_filter)
        self._build_mapping(model_channels * channel_mult_noise, block_kwargs["init"])
        skips, cout = self._build_encoder(encoder_type, block_kwargs)
        self._build_decoder(decoder_type, bottleneck_attention, skips, cout, block_kwargs)

    # ----------------------------------------------------------------------------------------
    # Construction
    # ----------------------------------------------------------------------------------------
    def _build_mapping(self, noise_channels: int, init: dict) -> None:
        """Embedding of noise level, class and augmentation labels: two SiLU-MLP layers."""
        if self.embedding_type == "zero":
            self.register_buffer("zero_emb", torch.zeros(1, self.emb_channels), persistent=False)
            return
        if self.embedding_type == "positional":
            self.map_noise = PositionalEmbedding(noise_channels, endpoint=True)
        else:
            self.map_noise = FourierEmbedding(noise_channels)
        self.map_label = Linear(self.label_dim, noise_channels, **init) if self.label_dim else None
        self.map_augment = (
            Linear(self.augment_dim, noise_channels, bias=False, **init)
            if self.augment_dim
            else None
        )
        self.map_layer0 = Linear(noise_channels, self.emb_channels, **init)
        self.map_layer1 = Linear(self.emb_channels, self.emb_channels, **init)

    def _build_encoder(self, encoder_type: str, block_kwargs: dict) -> tuple[list[int], int]:
        """Levels of (down block, aux path, ``num_blocks`` blocks); returns skip widths."""
        self.enc, self._enc_kinds = nn.ModuleDict(), cast(dict[str, str], {})
        init, mc = block_kwargs["init"], self.model_channels
        down = dict(down=True, resample_filter=self.resample_filter)
        cout = caux = self.in_channels
        skips = []

        def add(name: str, kind: str, module: nn.Module) -> None:
            self.enc[name], self._enc_kinds[name] = module, kind
            if not kind.startswith("aux"):
                skips.append(module.out_channels)

        for level, mult in enumerate(self.channel_mult):
            res = self.img_shape_y >> level
            if level == 0:
                cout = mc
                add(f"{res}x{res}_conv", "conv", Conv2d(caux, cout, kernel=3, **init))
            else:
                add(f"{res}x{res}_down", "down", UNetBlock(cout, cout, down=True, **block_kwargs))
                if encoder_type == "skip":
                    add(f"{res}x{res}_aux_down", "aux_down", Conv2d(caux, caux, 0, **down))
                    add(f"{res}x{res}_aux_skip", "aux_skip", Conv2d(caux, cout, 1, **init))
                if encoder_type == "residual":
                    conv = Conv2d(caux, cout, 3, fused_resample=True, **down, **init)
                    add(f"{res}x{res}_aux_residual", "aux_residual", conv)
                    caux = cout
            for idx in range(self.num_blocks):
                cin, cout = cout, mc * mult
                attn = res in self.attn_resolutions
                block = UNetBlock(cin, cout, attention=attn, **block_kwargs)
                add(f"{res}x{res}_block{idx}", "block", block)
        return skips, cout

    def _build_decoder(
        self, decoder_type: str, bottleneck: bool, skips: list[int], cout: int, block_kwargs: dict
    ) -> None:
        """Mirror of the encoder; each level ends in an output head for the skip decoder."""
        self.dec, self._dec_kinds = nn.ModuleDict(), cast(dict[str, str], {})

        def add(name: str, kind: str, module: nn.Module) -> None:
            self.dec[name], self._dec_kinds[name] = module, kind

        filt, mc, last = self.resample_filter, self.model_channels, len(self.channel_mult) - 1
        for level, mult in reversed(list(enumerate(self.channel_mult))):
            res = self.img_shape_y >> level
            if level == last:
                attn = bottleneck
                add(f"{res}x{res}_in0", "in", UNetBlock(cout, cout, attention=attn, **block_kwargs))
                add(f"{res}x{res}_in1", "in", UNetBlock(cout, cout, **block_kwargs))
            else:
                add(f"{res}x{res}_up", "up", UNetBlock(cout, cout, up=True, **block_kwargs))
            for idx in range(self.num_blocks + 1):
                cin, cout = cout + skips.pop(), mc * mult
                attn = idx == self.num_blocks and res in self.attn_resolutions
                block = UNetBlock(cin, cout, attention=attn, **block_kwargs)
                add(f"{res}x{res}_block{idx}", "block", block)
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < last:
                    up = Conv2d(
                        self.out_channels, self.out_channels, 0, up=True, resample_filter=filt
                    )
                    add(f"{res}x{res}_aux_up", "aux_up", up)
                add(f"{res}x{res}_aux_norm", "aux_norm", GroupNorm(cout, eps=1e-6))
                conv = Conv2d(cout, self.out_channels, kernel=3, **block_kwargs["init_zero"])
                add(f"{res}x{res}_aux_conv", "aux_conv", conv)

    # ----------------------------------------------------------------------------------------
    # Forward
    # ----------------------------------------------------------------------------------------
    def _validate(self, x, noise_labels, class_labels, augment_labels) -> None:
        if x.ndim != 4:
            raise ValueError(f"Expected 'x' to be a 4D tensor, got shape {tuple(x.shape)}")
        m = self._input_shape_mult
        for d in x.shape[-2:]:
            if not ((d & (d - 1) == 0 and 0 < d < m) or d % m == 0):
                raise ValueError(
                    f"Input spatial dimensions {tuple(x.shape[-2:])} must be powers of 2 below "
                    f"{m} or multiples of 2**(N-1)={m}, N={self._num_levels} UNet levels"
                )
        B = x.shape[0]
        if noise_labels.ndim != 1 or noise_labels.shape[0] not in (B, 1):
            raise ValueError(
                f"Expected 'noise_labels' shape ({B},) or (1,), got {tuple(noise_labels.shape)}"
            )
        if self.label_dim and class_labels is None:
            raise TypeError(f"'class_labels' of shape ({B}, {self.label_dim}) is required")
        for name, v, dim in (
            ("class", class_labels, self.label_dim),
            ("augment", augment_labels, self.augment_dim),
        ):
            if dim and v is not None and tuple(v.shape) != (B, dim):
                raise ValueError(
                    f"Expected '{name}_labels' shape ({B}, {dim}), got {tuple(v.shape)}"
                )
        if self.additive_pos_embed and tuple(x.shape[-2:]) != tuple(self.spatial_emb.shape[-2:]):
            raise ValueError(
                f"additive_pos_embed needs x of spatial shape {tuple(self.spatial_emb.shape[-2:])}"
                f", got {tuple(x.shape[-2:])}"
            )

    def _embedding(self, noise_labels, class_labels, augment_labels, batch: int, device):
        """Conditioning vector ``e`` (B, D_emb): MLP of [sin, cos](noise) + labels."""
        if self.embedding_type == "zero":
            return self.zero_emb.expand(noise_labels.shape[0], -1)
        cos, sin = self.map_noise(noise_labels).chunk(2, dim=1)
        emb = torch.cat([sin, cos], dim=1)  # (B, N)
        if self.map_label is not None:
            y = class_labels
            if self.training and self.label_dropout:
                keep = torch.rand(batch, 1, device=device) >= self.label_dropout
                y = y * keep.to(y.dtype)
            emb = emb + self.map_label(y * math.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = F.silu(self.map_layer0(emb))
        return F.silu(self.map_layer1(emb))  # (B, D_emb)

    def profiling_blocks(self) -> list[tuple[str, list[nn.Module]]]:
        """Blocks that profiler ranges enclose (``hpcdiff.nvtx``): ``model.enc.<i>`` and
        ``model.dec.<i>``, i = position in ``enc`` / ``dec`` (the order of the calls)."""
        return [("model.enc", list(self.enc.values())), ("model.dec", list(self.dec.values()))]

    def _run(self, block: nn.Module, x: torch.Tensor, emb: torch.Tensor, threshold: float):
        if math.isqrt(x.shape[-2] * x.shape[-1]) > threshold and torch.is_grad_enabled():
            return checkpoint(block, x, emb, use_reentrant=False)
        return block(x, emb)

    def forward(
        self,
        x: torch.Tensor,
        noise_labels: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        augment_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if not torch.compiler.is_compiling():
            self._validate(x, noise_labels, class_labels, augment_labels)
        if self.use_apex_gn:
            x = x.contiguous(memory_format=torch.channels_last)
        emb = self._embedding(noise_labels, class_labels, augment_labels, x.shape[0], x.device)
        thr = self.checkpoint_threshold

        # Encoder: (B, C_in, H, W) -> (B, C, H / 2^(N-1), W / 2^(N-1)), caching skips.
        skips, aux = cast(list[torch.Tensor], []), x
        for name, block in self.enc.items():
            kind = self._enc_kinds[name]
            if kind == "aux_down":
                aux = block(aux)
            elif kind == "aux_skip":
                x = skips[-1] = x + block(aux)
            elif kind == "aux_residual":
                x = skips[-1] = aux = (x + block(aux)) / math.sqrt(2)
            elif kind == "conv":
                x = block(x)
                if self.additive_pos_embed:
                    x = x + self.spatial_emb.to(x.dtype)
                skips.append(x)
            else:
                x = self._run(block, x, emb, thr)
                skips.append(x)

        # Decoder: upsample, concatenate skips; output heads accumulate into `aux`.
        aux = tmp = None
        for name, block in self.dec.items():
            kind = self._dec_kinds[name]
            if kind == "aux_up":
                aux = block(aux)
            elif kind == "aux_norm":
                tmp = block(x)
            elif kind == "aux_conv":
                tmp = block(F.silu(tmp))
                aux = tmp if aux is None else tmp + aux
            elif kind == "block":
                x = self._run(block, torch.cat([x, skips.pop()], dim=1), emb, thr)
            else:
                x = self._run(block, x, emb, thr / 2 if kind == "up" else math.inf)
        return aux  # (B, C_out, H, W)
