"""Layers of the Diffusion Transformer (Peebles & Xie 2023): adaLN-Zero blocks and 2-D positions.

Module names (``attention.attn_op.qkv``, ``linear.layers.0``, ``adaptive_modulation.1``,
``proj_layer.output_projection``) follow PhysicsNeMo's DiT so its state dicts load here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation ``x (1 + scale) + shift`` (Peebles & Xie 2023, Sec. 3.2)."""
    return torch.addcmul(shift, x, 1 + scale)


def layer_norm(x: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the width without affine parameters (eps 1e-6), as in DiT."""
    return F.layer_norm(x, x.shape[-1:], eps=1e-6)


def sincos_2d(h: int, w: int, dim: int, device=None) -> torch.Tensor:
    """Fixed 2-D sin-cos embedding (He et al. 2022, MAE): half the width per axis, (h*w, dim).

    Per axis, position ``p`` maps to ``[sin(p w_k), cos(p w_k)]`` with ``w_k = 10000^(-k/K)``,
    ``K = dim / 4``; the first half of the width encodes the row, the second the column.
    """
    if dim % 4 != 0:
        raise ValueError(f"sinusoidal positional embedding needs hidden_size % 4 == 0, got {dim}")
    K = dim // 4
    omega = 10000.0 ** (-torch.arange(K, dtype=torch.float64, device=device) / K)
    rows, cols = torch.meshgrid(
        torch.arange(h, dtype=torch.float64, device=device),
        torch.arange(w, dtype=torch.float64, device=device),
        indexing="ij",
    )
    parts = []
    for pos in (rows.reshape(-1), cols.reshape(-1)):
        arg = torch.outer(pos, omega)  # (T, K)
        parts += [arg.sin(), arg.cos()]
    return torch.cat(parts, dim=1).float()  # (T, dim)


def rope_2d(h: int, w: int, head_dim: int, theta: float = 10000.0, device=None):
    """Axial 2-D rotary tables (Su et al. 2021; Heo et al. 2024): cos, sin of shape (h*w, head_dim).

    The first half of each head rotates with the row index, the second with the column;
    within a half of size ``a``, frequencies are ``theta^(-2i/a)``, i < a/2.
    """
    if head_dim % 4 != 0:
        raise ValueError(f"2-D RoPE needs a head dimension divisible by 4, got {head_dim}")
    a = head_dim // 2
    inv = theta ** (-torch.arange(0, a, 2, dtype=torch.float64, device=device) / a)  # (a/2,)
    rows, cols = torch.meshgrid(
        torch.arange(h, dtype=torch.float64, device=device),
        torch.arange(w, dtype=torch.float64, device=device),
        indexing="ij",
    )
    per_axis = [torch.outer(p.reshape(-1), inv) for p in (rows, cols)]  # 2 x (T, a/2)
    angles = torch.cat([torch.cat([t, t], dim=1) for t in per_axis], dim=1)  # (T, head_dim)
    return angles.cos().float(), angles.sin().float()


def apply_rope(q: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs ``(q_i, q_{i+a/2})`` of each axis half: ``q cos + rot(q) sin``."""
    axes = q.unflatten(-1, (2, 2, -1))  # (..., axis, half, a/2)
    rot = torch.stack([-axes[..., 1, :], axes[..., 0, :]], dim=-2).flatten(-3)
    return q * cos.to(q.dtype) + rot * sin.to(q.dtype)


class SelfAttention(nn.Module):
    """Multi-head self-attention over tokens with ``F.scaled_dot_product_attention``."""

    def __init__(self, hidden_size: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.attn_op = nn.ModuleDict(
            {
                "qkv": nn.Linear(hidden_size, 3 * hidden_size),
                "proj": nn.Linear(hidden_size, hidden_size),
            }
        )

    def forward(self, x: torch.Tensor, rope: tuple | None = None) -> torch.Tensor:
        B, T, D = x.shape
        qkv = self.attn_op["qkv"](x).reshape(B, T, 3, self.num_heads, D // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, heads, T, D/heads)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        a = F.scaled_dot_product_attention(q, k, v)  # (B, heads, T, D/heads)
        return self.attn_op["proj"](a.transpose(1, 2).reshape(B, T, D))


class Mlp(nn.Module):
    """Two-layer perceptron with tanh-approximated GELU."""

    def __init__(self, hidden_size: int, mlp_hidden: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(hidden_size, mlp_hidden),
            nn.GELU(approximate="tanh"),
            nn.Linear(mlp_hidden, hidden_size),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DiTBlock(nn.Module):
    """adaLN-Zero block: ``x += g_a * Attn(mod(LN(x)))``, then ``x += g_m * MLP(mod(LN(x)))``.

    Shifts, scales and gates come from ``SiLU -> Linear`` of the conditioning vector (zero
    initialized, so each block starts as the identity; Peebles & Xie 2023, Sec. 3.2).
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.attention = SelfAttention(hidden_size, num_heads)
        self.linear = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaptive_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor, rope: tuple | None = None) -> torch.Tensor:
        mods = self.adaptive_modulation(c).unsqueeze(1).chunk(6, dim=2)  # 6 x (B, 1, D)
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = mods
        x = torch.addcmul(
            x, gate_a, self.attention(modulate(layer_norm(x), shift_a, scale_a), rope)
        )
        return torch.addcmul(x, gate_m, self.linear(modulate(layer_norm(x), shift_m, scale_m)))


class FinalLayer(nn.Module):
    """adaLN modulation then projection of each token to a p x p x C_out patch."""

    def __init__(self, hidden_size: int, patch_dim: int) -> None:
        super().__init__()
        self.output_projection = nn.Linear(hidden_size, patch_dim)
        self.adaptive_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaptive_modulation(c).unsqueeze(1).chunk(2, dim=2)  # (B, 1, D)
        return self.output_projection(modulate(layer_norm(x), shift, scale))  # (B, T, p*p*C)


def zero_(module: nn.Linear) -> None:
    """Zero a linear layer's weight and bias (adaLN-Zero and output initialization)."""
    nn.init.zeros_(module.weight)
    if module.bias is not None:
        nn.init.zeros_(module.bias)
