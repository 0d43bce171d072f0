"""Building blocks of the DDPM++ / NCSN++ UNet (Song et al. 2021; Karras et al. 2022, App. F.2).

Parameter and buffer names (``weight``, ``bias``, ``resample_filter``, ``freqs``, ``norm0``,
``conv0``, ``affine``, ``norm1``, ``conv1``, ``skip``, ``attn.norm/qkv/proj``) follow PhysicsNeMo's
layers, so state dicts trained there load here unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

_ACTIVATIONS = {
    "silu": F.silu,
    "relu": F.relu,
    "leaky_relu": F.leaky_relu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "gelu": F.gelu,
    "elu": F.elu,
}


def weight_init(shape: Sequence[int], mode: str, fan_in: int, fan_out: int) -> torch.Tensor:
    """Random init of Glorot & Bengio 2010 (xavier_*) or He et al. 2015 (kaiming_*)."""
    if mode == "xavier_uniform":
        return math.sqrt(6 / (fan_in + fan_out)) * (torch.rand(*shape) * 2 - 1)
    if mode == "xavier_normal":
        return math.sqrt(2 / (fan_in + fan_out)) * torch.randn(*shape)
    if mode == "kaiming_uniform":
        return math.sqrt(3 / fan_in) * (torch.rand(*shape) * 2 - 1)
    if mode == "kaiming_normal":
        return math.sqrt(1 / fan_in) * torch.randn(*shape)
    raise ValueError(f"invalid init_mode {mode!r}")


def _like(p: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
    """``p`` in the dtype of ``x`` (so a float32 model runs on bfloat16 inputs)."""
    return p if p is None or p.dtype == x.dtype else p.to(x.dtype)


def activation(name: str | None):
    """The activation function called ``name`` (None: identity)."""
    if name is None:
        return None
    fn = _ACTIVATIONS.get(name.lower())
    if fn is None:
        raise ValueError(f"unknown activation {name!r}; choose from {sorted(_ACTIVATIONS)}")
    return fn


class Linear(nn.Module):
    """Dense layer ``y = x W^T + b`` with EDM-style scaled initialization."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        init_mode: str = "kaiming_normal",
        init_weight: float = 1.0,
        init_bias: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        fans = dict(mode=init_mode, fan_in=in_features, fan_out=out_features)
        self.weight = nn.Parameter(weight_init([out_features, in_features], **fans) * init_weight)
        self.bias = nn.Parameter(weight_init([out_features], **fans) * init_bias) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, _like(self.weight, x), _like(self.bias, x))


class Conv2d(nn.Module):
    """2-D convolution with optional FIR up/down-sampling (Karras et al. 2022, Appendix F.2).

    ``kernel=0`` gives a pure resampling layer. The resampling filter is the outer product of
    ``resample_filter`` normalized to unit sum; up-sampling uses it scaled by 4 in a stride-2
    transposed convolution. ``fused_resample`` convolves before down-sampling (after up-sampling).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        bias: bool = True,
        up: bool = False,
        down: bool = False,
        resample_filter: Sequence[int] = (1, 1),
        fused_resample: bool = False,
        init_mode: str = "kaiming_normal",
        init_weight: float = 1.0,
        init_bias: float = 0.0,
    ) -> None:
        if up and down:
            raise ValueError("Conv2d: 'up' and 'down' cannot both be True")
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.up, self.down, self.fused_resample = up, down, fused_resample
        fans = dict(
            mode=init_mode, fan_in=in_channels * kernel**2, fan_out=out_channels * kernel**2
        )
        shape = [out_channels, in_channels, kernel, kernel]
        self.weight = nn.Parameter(weight_init(shape, **fans) * init_weight) if kernel else None
        self.bias = (
            nn.Parameter(weight_init([out_channels], **fans) * init_bias)
            if kernel and bias
            else None
        )
        f = torch.as_tensor(list(resample_filter), dtype=torch.float32)
        f = torch.outer(f, f)[None, None] / f.sum().square()  # (1, 1, k, k)
        self.register_buffer("resample_filter", f if up or down else None)

    def _resample(self, x: torch.Tensor, f: torch.Tensor, channels: int, pad: int) -> torch.Tensor:
        # Depthwise (transposed) convolution; on CPU faster than avg_pool2d / nearest upsampling.
        if self.up:
            w = (f * 4).expand(channels, 1, -1, -1)
            return F.conv_transpose2d(x, w, groups=channels, stride=2, padding=pad)
        w = f.expand(channels, 1, -1, -1)
        return F.conv2d(x, w, groups=channels, stride=2, padding=pad)

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        """Convolution of ``x``, times ``gain`` (folded into the weights when there are any)."""
        w, b, f = _like(self.weight, x), _like(self.bias, x), _like(self.resample_filter, x)
        f_pad = (f.shape[-1] - 1) // 2 if f is not None else 0
        if w is None:  # resampling only
            x = self._resample(x, f, self.in_channels, f_pad) if f is not None else x
            return x if gain == 1.0 else x * gain
        if gain != 1.0:
            w, b = w * gain, (None if b is None else b * gain)
        w_pad = w.shape[-1] // 2
        if f is not None and self.fused_resample:
            if self.up:
                x = self._resample(x, f, self.in_channels, max(f_pad - w_pad, 0))
                return F.conv2d(x, w, b, padding=max(w_pad - f_pad, 0))
            x = F.conv2d(x, w, padding=w_pad + f_pad)
            x = self._resample(x, f, self.out_channels, 0)
            return x if b is None else x.add_(b.view(1, -1, 1, 1))
        if f is not None:
            x = self._resample(x, f, self.in_channels, f_pad)
        return F.conv2d(x, w, b, padding=w_pad)


class GroupNorm(nn.Module):
    """Group normalization (Wu & He 2018), <= 32 groups of >= 4 channels, optional activation.

    In eval mode the group variance is the unbiased estimate ``var * n / (n - 1)``, as in
    PhysicsNeMo's inference path, so imported models give the same outputs there.
    """

    def __init__(
        self,
        num_channels: int,
        num_groups: int = 32,
        min_channels_per_group: int = 4,
        eps: float = 1e-5,
        act: str | None = None,
    ) -> None:
        super().__init__()
        self.num_groups = min(num_groups, -(-num_channels // min_channels_per_group))
        if num_channels % self.num_groups != 0:
            raise ValueError(
                f"GroupNorm: num_channels={num_channels} is not divisible by the "
                f"{self.num_groups} groups implied by min_channels_per_group="
                f"{min_channels_per_group}"
            )
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.act = act
        self.act_fn = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b, eps = _like(self.weight, x), _like(self.bias, x), self.eps
        if not self.training:
            # (x - mu) / sqrt(n/(n-1) var + eps) == GN_{eps (n-1)/n}(x) * sqrt((n-1)/n)
            n = (x.shape[1] // self.num_groups) * math.prod(x.shape[2:])
            r = (n - 1) / n
            w, eps = w * math.sqrt(r), eps * r
        x = F.group_norm(x, self.num_groups, w, b, eps)
        return x if self.act_fn is None else self.act_fn(x)


class PositionalEmbedding(nn.Module):
    """Sinusoidal embedding (Vaswani et al. 2017): ``[cos(x w_k), sin(x w_k)]``, ``w_k = P^(-k/K)``.

    ``endpoint`` spans the exponents up to 1 inclusive (DDPM++); ``learnable`` appends the
    Linear-SiLU-Linear MLP used by DiT's timestep embedder.
    """

    def __init__(
        self,
        num_channels: int,
        max_positions: int = 10000,
        endpoint: bool = False,
        learnable: bool = False,
        mlp_hidden_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.num_channels, self.max_positions, self.endpoint = num_channels, max_positions, endpoint
        half = num_channels // 2
        k = torch.arange(half, dtype=torch.float32) / (half - (1 if endpoint else 0))
        self.register_buffer("freqs", (1 / max_positions) ** k)
        self.mlp = None
        if learnable:
            hidden = mlp_hidden_dim or 2 * num_channels
            self.mlp = nn.Sequential(
                nn.Linear(num_channels, hidden), nn.SiLU(), nn.Linear(hidden, num_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = torch.promote_types(x.dtype, self.freqs.dtype)  # integer or bf16 t: float32
        arg = torch.outer(x.to(dtype), self.freqs.to(dtype))  # (B, K)
        emb = torch.cat([arg.cos(), arg.sin()], dim=1)  # (B, 2K)
        return emb if self.mlp is None else self.mlp(emb)


class FourierEmbedding(nn.Module):
    """Random Fourier features (Tancik et al. 2020; NCSN++): ``[cos(2 pi f x), sin(2 pi f x)]``."""

    def __init__(self, num_channels: int, scale: float = 16) -> None:
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x if x.is_floating_point() else x.to(self.freqs.dtype)
        arg = torch.outer(x, 2 * math.pi * _like(self.freqs, x))  # (B, K)
        return torch.cat([arg.cos(), arg.sin()], dim=1)
