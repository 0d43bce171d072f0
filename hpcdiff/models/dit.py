"""DiT: the Diffusion Transformer of Peebles & Xie 2023 as a ``DiffusionModel``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from hpcdiff.core import Module
from hpcdiff.models.conditioning import split_condition
from hpcdiff.models.dit_layers import DiTBlock, FinalLayer, rope_2d, sincos_2d, zero_
from hpcdiff.models.layers import PositionalEmbedding

POS_EMBEDS = ("learnable", "sinusoidal", "none")


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


class _PatchTokenizer(nn.Module):
    """(B, C, h p, w p) -> (B, h w, D): strided convolution plus a positional embedding."""

    def __init__(self, grid, patch, in_channels: int, hidden_size: int, pos_embed: str) -> None:
        super().__init__()
        self.grid, self.kind = grid, pos_embed
        conv = nn.Conv2d(in_channels, hidden_size, kernel_size=patch, stride=patch)
        self.x_embedder = nn.ModuleDict({"proj": conv})
        T = grid[0] * grid[1]
        if pos_embed == "learnable":
            self.pos_embed = nn.Parameter(torch.zeros(1, T, hidden_size))
        elif pos_embed == "sinusoidal":
            table = sincos_2d(grid[0], grid[1], hidden_size)[None]
            self.register_buffer("pos_embed", table, persistent=False)
        else:
            self.pos_embed = None

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        tokens = self.x_embedder["proj"](x).flatten(2).transpose(1, 2)  # (B, T, D)
        if self.pos_embed is None:
            return tokens
        pe = self.pos_embed
        if (h, w) != tuple(self.grid):  # sinusoidal only (validated in DiT.forward)
            pe = sincos_2d(h, w, tokens.shape[-1], device=x.device)[None]
        return tokens + pe.to(tokens.dtype)


class _ConditionEmbedder(nn.Module):
    """``c = MLP([cos, sin](t w)) + W_y y``: timestep plus (optional) vector condition."""

    def __init__(self, hidden_size: int, condition_dim: int | None) -> None:
        super().__init__()
        self.t_embedder = PositionalEmbedding(hidden_size, learnable=True)
        self.cond_embedder = (
            nn.Linear(condition_dim, hidden_size, bias=False) if condition_dim else None
        )

    def forward(self, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        c = self.t_embedder(t)  # (B, D)
        if y is not None:
            c = c + self.cond_embedder(y.to(c.dtype))  # type: ignore[misc]  # y needs it (_validate)
        return c


class _Detokenizer(nn.Module):
    """(B, h w, D) -> (B, C_out, h p, w p): final adaLN layer, then unpatchify."""

    def __init__(self, patch, out_channels: int, hidden_size: int) -> None:
        super().__init__()
        self.patch, self.out_channels = patch, out_channels
        self.proj_layer = FinalLayer(hidden_size, patch[0] * patch[1] * out_channels)

    def forward(self, x: torch.Tensor, c: torch.Tensor, h: int, w: int) -> torch.Tensor:
        (p, q), C = self.patch, self.out_channels
        x = self.proj_layer(x, c).reshape(x.shape[0], h, w, p, q, C)  # (B, h, w, p, q, C)
        return x.permute(0, 5, 1, 3, 2, 4).reshape(x.shape[0], C, h * p, w * q)


class DiT(Module):
    """Diffusion Transformer (Peebles & Xie 2023): patchify, N adaLN-Zero blocks, unpatchify.

    ``forward(x, t, condition)`` satisfies ``DiffusionModel``: image conditions (B, C, H, W)
    of a tensor or TensorDict condition (including the patch ``"positional_embedding"``) are
    concatenated to ``x`` before tokenization, so ``in_channels`` counts them; vector
    conditions (B, d) are embedded and added to the timestep embedding (``condition_dim`` is
    their total width). Inputs of any size tile into ceil(H/p) x ceil(W/p) patches (centered
    zero padding, cropped again). The state dict matches PhysicsNeMo's ``DiT`` with its
    default tokenizer, detokenizer and attention.

    Parameters
    ----------
    input_size : int or (H, W)
        Spatial size the learnable positional embedding is made for.
    pos_embed : {"learnable", "sinusoidal", "none"}
        Additive token positions: learned table, fixed 2-D sin-cos (any input size), or none.
    rope : bool
        Axial 2-D rotary position embedding of queries and keys (any input size).
    activation_checkpointing : bool
        Recompute each block in the backward pass instead of storing its activations.

    >>> net = DiT(input_size=(8, 12), in_channels=3, patch_size=4, hidden_size=32, depth=2,
    ...           num_heads=4, condition_dim=5)
    >>> net(torch.randn(2, 3, 8, 12), torch.rand(2), torch.randn(2, 5)).shape
    torch.Size([2, 3, 8, 12])
    """

    def __init__(
        self,
        input_size: int | Sequence[int],
        in_channels: int,
        patch_size: int | Sequence[int] = 8,
        out_channels: int | None = None,
        hidden_size: int = 384,
        depth: int = 12,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        condition_dim: int | None = None,
        pos_embed: str = "learnable",
        rope: bool = False,
        rope_theta: float = 10000.0,
        activation_checkpointing: bool = False,
    ) -> None:
        if pos_embed not in POS_EMBEDS:
            raise ValueError(f"pos_embed must be one of {list(POS_EMBEDS)}, got {pos_embed!r}")
        if hidden_size % num_heads != 0:
            raise ValueError(f"hidden_size={hidden_size} is not divisible by num_heads={num_heads}")
        super().__init__()
        self.input_size, self.patch_size = _pair(input_size), _pair(patch_size)
        self.in_channels = in_channels
        self.out_channels = out_channels or in_channels
        self.condition_dim, self.num_heads = condition_dim, num_heads
        self.activation_checkpointing = activation_checkpointing
        self.grid = tuple(-(-n // p) for n, p in zip(self.input_size, self.patch_size))
        self.tokenizer = _PatchTokenizer(
            self.grid, self.patch_size, in_channels, hidden_size, pos_embed
        )
        self.conditioning_embedder = _ConditionEmbedder(hidden_size, condition_dim)
        self.detokenizer = _Detokenizer(self.patch_size, self.out_channels, hidden_size)
        self.blocks = nn.ModuleList(
            DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)
        )
        self.rope_theta = rope_theta if rope else None
        if rope:
            cos, sin = rope_2d(self.grid[0], self.grid[1], hidden_size // num_heads, rope_theta)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Xavier-uniform linear layers, N(0, 0.02) positions, zeroed adaLN and output layers."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        proj = self.tokenizer.x_embedder["proj"]
        nn.init.xavier_uniform_(proj.weight.view(proj.weight.shape[0], -1))
        nn.init.zeros_(proj.bias)
        if isinstance(self.tokenizer.pos_embed, nn.Parameter):
            nn.init.normal_(self.tokenizer.pos_embed, std=0.02)
        if self.conditioning_embedder.cond_embedder is not None:
            zero_(self.conditioning_embedder.cond_embedder)
        for block in self.blocks:
            zero_(block.adaptive_modulation[-1])
        final = self.detokenizer.proj_layer
        zero_(final.adaptive_modulation[-1])
        zero_(final.output_projection)

    def profiling_blocks(self) -> list[tuple[str, list[nn.Module]]]:
        """Blocks that profiler ranges enclose (``hpcdiff.nvtx``): ``model.block.<i>``."""
        return [("model.block", list(self.blocks))]

    def _validate(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None, grid) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"DiT expects x with image conditions concatenated to shape (B, in_channels="
                f"{self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        if t.ndim != 1 or t.shape[0] not in (x.shape[0], 1):
            raise ValueError(f"Expected 't' of shape ({x.shape[0]},), got {tuple(t.shape)}")
        if y is not None and (
            not self.condition_dim or tuple(y.shape) != (x.shape[0], self.condition_dim)
        ):
            raise ValueError(
                f"vector condition of shape {tuple(y.shape)} does not match condition_dim="
                f"{self.condition_dim} (batch {x.shape[0]})"
            )
        if self.tokenizer.kind == "learnable" and grid != self.grid:
            raise ValueError(
                f"learnable positional embedding is sized for input_size={self.input_size} "
                f"({self.grid} patches); got x of spatial shape {tuple(x.shape[-2:])}. Use "
                "pos_embed='sinusoidal' or 'none' (optionally rope=True) for other sizes"
            )

    def _rope(self, h: int, w: int, device) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.rope_theta is None:
            return None
        if (h, w) == self.grid:
            return self.rope_cos, self.rope_sin
        head_dim = self.rope_cos.shape[-1]
        return rope_2d(h, w, head_dim, self.rope_theta, device=device)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        condition: torch.Tensor | Mapping | None = None,
    ) -> torch.Tensor:
        images, y = split_condition(condition)
        if images:
            x = torch.cat([x, *(i.to(x.dtype) for i in images)], dim=1)  # (B, C_in, H, W)
        (p, q), (H, W) = self.patch_size, x.shape[-2:]
        h, w = -(-H // p), -(-W // q)
        if not torch.compiler.is_compiling():
            self._validate(x, t, y, (h, w))
        top, left = (h * p - H) // 2, (w * q - W) // 2
        if (h * p, w * q) != (H, W):
            x = F.pad(x, (left, w * q - W - left, top, h * p - H - top))
        tokens = self.tokenizer(x, h, w)  # (B, T, D)
        c = self.conditioning_embedder(t, y)  # (B, D)
        rope = self._rope(h, w, x.device)
        for block in self.blocks:
            if self.activation_checkpointing and torch.is_grad_enabled():
                tokens = checkpoint(block, tokens, c, rope, use_reentrant=False)
            else:
                tokens = block(tokens, c, rope)
        out = self.detokenizer(tokens, c, h, w)  # (B, C_out, h p, w q)
        return out[..., top : top + H, left : left + W]
