"""The UNet block of DDPM++ / NCSN++ / ADM (Karras et al. 2022, Appendix F.2) and its attention."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hpcdiff.models.layers import Conv2d, GroupNorm, Linear, _like


class UNetAttention(nn.Module):
    """Multi-head self-attention over pixels with a residual: ``x + proj(attn(norm(x)))``.

    The ``qkv`` projection interleaves its output channels as (head, channel, q/k/v), the
    layout of EDM's and PhysicsNeMo's checkpoints.
    """

    def __init__(
        self,
        out_channels: int,
        num_heads: int,
        eps: float = 1e-5,
        init: dict[str, Any] | None = None,
        init_zero: dict[str, Any] | None = None,
        init_attn: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(num_heads, int) or num_heads <= 0:
            raise ValueError(f"num_heads must be a positive integer, got {num_heads!r}")
        if out_channels % num_heads != 0:
            raise ValueError(
                f"out_channels={out_channels} is not divisible by num_heads={num_heads}"
            )
        init = init or {}
        self.num_heads = num_heads
        self.norm = GroupNorm(out_channels, eps=eps)
        self.qkv = Conv2d(out_channels, out_channels * 3, kernel=1, **(init_attn or init))
        self.proj = Conv2d(out_channels, out_channels, kernel=1, **(init_zero or {}))

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, self.num_heads, C // self.num_heads, 3, H * W)
        q, k, v = qkv.transpose(2, 4).unbind(3)  # 3 x (B, heads, H*W, C/heads)
        a = F.scaled_dot_product_attention(q, k, v)  # (B, heads, H*W, C/heads)
        a = a.transpose(2, 3).reshape(B, C, H, W)
        return self.proj(a, gain=gain).add_(x, alpha=gain)  # gain * (x + proj(a))


class UNetBlock(nn.Module):
    """Residual block: GN-act-conv, embedding shift (or scale/shift), GN-act-dropout-conv, skip.

    ``x_out = skip_scale * (conv1(act(GN(conv0(act(GN(x))) + A e))) + skip(x))``, optionally
    followed by self-attention (also scaled by ``skip_scale``); ``adaptive_scale`` uses
    ``act(GN(h) * (1 + scale) + shift)`` instead of the additive shift.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        up: bool = False,
        down: bool = False,
        attention: bool = False,
        num_heads: int | None = None,
        channels_per_head: int = 64,
        dropout: float = 0.0,
        skip_scale: float = 1.0,
        eps: float = 1e-5,
        resample_filter: Sequence[int] = (1, 1),
        resample_proj: bool = False,
        adaptive_scale: bool = True,
        init: dict[str, Any] | None = None,
        init_zero: dict[str, Any] | None = None,
        init_attn: dict[str, Any] | None = None,
        act: str = "silu",
    ) -> None:
        super().__init__()
        init = init or {}
        init_zero = init_zero if init_zero is not None else {"init_weight": 0}
        self.in_channels, self.out_channels, self.emb_channels = (
            in_channels,
            out_channels,
            emb_channels,
        )
        self.dropout, self.skip_scale, self.adaptive_scale = dropout, skip_scale, adaptive_scale
        self.act = act
        resample = dict(up=up, down=down, resample_filter=resample_filter)
        self.norm0 = GroupNorm(in_channels, eps=eps, act=act)
        self.conv0 = Conv2d(in_channels, out_channels, kernel=3, **resample, **init)
        self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1), **init)
        self.norm1 = GroupNorm(out_channels, eps=eps, act=None if adaptive_scale else act)
        self.conv1 = Conv2d(out_channels, out_channels, kernel=3, **init_zero)
        self.skip = None
        if out_channels != in_channels or up or down:
            kernel = 1 if resample_proj or out_channels != in_channels else 0
            self.skip = Conv2d(in_channels, out_channels, kernel=kernel, **resample, **init)
        self.attn = None
        if attention:
            heads = num_heads if num_heads is not None else out_channels // channels_per_head
            self.attn = UNetAttention(
                out_channels, heads, eps=eps, init=init, init_zero=init_zero, init_attn=init_attn
            )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        orig = x
        x = self.conv0(self.norm0(x))  # (B, C_out, H', W')
        params = _like(self.affine(emb), x)[:, :, None, None]  # (B, C_out[*2], 1, 1)
        if self.adaptive_scale:
            scale, shift = params.chunk(2, dim=1)
            x = F.silu(torch.addcmul(shift, self.norm1(x), scale + 1))
        else:
            x = self.norm1(x.add_(params))
        # skip_scale is folded into the (small) convolution weights: one pass less over x.
        s = self.skip_scale
        x = self.conv1(F.dropout(x, p=self.dropout, training=self.training), gain=s)
        if self.skip is not None:
            x = x.add_(self.skip(orig, gain=s))
        else:
            x = x.add_(orig, alpha=s)
        return x if self.attn is None else self.attn(x, gain=s)
