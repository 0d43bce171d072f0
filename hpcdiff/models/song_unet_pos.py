"""SongUNet with a global positional embedding for patch training (CorrDiff-style)."""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import nn

from hpcdiff.models.song_unet import SongUNet

_SONG_UNET_ARGS = frozenset(inspect.signature(SongUNet.__init__).parameters) - {"self"}

GRID_TYPES = ("sinusoidal", "sinusoidal_octave", "learnable", "linear", "test")


def positional_grid(gridtype: str, channels: int, shape: Sequence[int]) -> torch.Tensor:
    """Fixed (C_PE, H, W) grid encoding pixel position in the global domain.

    ``linear``: ``(u, v)`` on [-1, 1]^2 with u along W and v along H. ``sinusoidal_octave``:
    for k < C/4, ``[sin(2^k u), sin(2^k v), cos(2^k u), cos(2^k v)]`` with u, v on [0, 2 pi];
    ``sinusoidal`` (legacy, for old checkpoints) uses frequencies ``2^linspace(0, C/4, C/4)``.
    ``test``: integer (row, column) indices. ``learnable`` grids are N(0, 1) initial values.

    >>> positional_grid("linear", 2, (2, 3))[0]
    tensor([[-1.,  0.,  1.],
            [-1.,  0.,  1.]])
    """
    H, W = int(shape[0]), int(shape[1])
    if gridtype == "learnable":
        return torch.randn(channels, H, W)
    if gridtype == "linear":
        if channels != 2:
            raise ValueError(f"N_grid_channels must be 2 for gridtype 'linear', got {channels}")
        v, u = torch.meshgrid(
            torch.linspace(-1, 1, H, dtype=torch.float64),
            torch.linspace(-1, 1, W, dtype=torch.float64),
            indexing="ij",
        )
        return torch.stack([u, v]).float()
    if gridtype == "test":
        if channels != 2:
            raise ValueError(f"N_grid_channels must be 2 for gridtype 'test', got {channels}")
        rows, cols = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
        return torch.stack([rows, cols]).float()
    if gridtype in ("sinusoidal", "sinusoidal_octave"):
        if channels % 4 != 0:
            raise ValueError(f"N_grid_channels must be a multiple of 4, got {channels}")
        n = channels // 4
        if gridtype == "sinusoidal":
            bands = 2.0 ** torch.linspace(0.0, n, n, dtype=torch.float64)
        else:
            bands = 2.0 ** torch.arange(n, dtype=torch.float64)
        v, u = torch.meshgrid(
            torch.linspace(0, 2 * math.pi, H, dtype=torch.float64),
            torch.linspace(0, 2 * math.pi, W, dtype=torch.float64),
            indexing="ij",
        )
        grids = [fn(z * f) for f in bands for fn in (torch.sin, torch.cos) for z in (u, v)]
        return torch.stack(grids).float()
    raise ValueError(f"Gridtype {gridtype!r} not supported; choose from {list(GRID_TYPES)}")


def select_patches(grid: torch.Tensor, global_index: torch.Tensor, batch: int) -> torch.Tensor:
    """Patches of a (C, H, W) grid at ``global_index`` (P, 2, Hp, Wp) of (row, column) indices.

    Returns (P * batch, C, Hp, Wp), patch-major within each sample group: row ``i`` holds patch
    ``i % P`` (the layout of PhysicsNeMo's patching utilities).
    """
    rows, cols = global_index[:, 0], global_index[:, 1]  # (P, Hp, Wp)
    patches = grid[:, rows, cols].transpose(0, 1)  # (P, C, Hp, Wp)
    return patches.repeat(batch, 1, 1, 1)


class SongUNetPosEmbd(SongUNet):
    """SongUNet whose input is concatenated with a global positional grid (Mardani et al. 2025).

    The grid (``gridtype``, ``N_grid_channels`` channels, ``img_resolution`` = the *global*
    domain) is cut to each patch with ``global_index`` (P, 2, Hp, Wp) or a user
    ``embedding_selector(grid) -> (P*B, C_PE, Hp, Wp)``; without either the whole grid is used.
    ``in_channels`` counts the grid channels. Defaults and state dict match PhysicsNeMo's
    ``SongUNetPosEmbd`` (lead-time embeddings are not supported).

    >>> net = SongUNetPosEmbd(img_resolution=16, in_channels=2 + 4, out_channels=2,
    ...                       model_channels=16, channel_mult=[1, 2], num_blocks=1,
    ...                       gridtype="sinusoidal_octave")
    >>> net(torch.ones(1, 2, 16, 16), torch.ones(1)).shape
    torch.Size([1, 2, 16, 16])
    """

    def __init__(
        self,
        img_resolution: int | Sequence[int],
        in_channels: int,
        out_channels: int,
        label_dim: int = 0,
        augment_dim: int = 0,
        model_channels: int = 128,
        channel_mult: Sequence[int] = (1, 2, 2, 2, 2),
        channel_mult_emb: int = 4,
        num_blocks: int = 4,
        attn_resolutions: Sequence[int] = (28,),
        dropout: float = 0.13,
        label_dropout: float = 0.0,
        embedding_type: str = "positional",
        channel_mult_noise: int = 1,
        encoder_type: str = "standard",
        decoder_type: str = "standard",
        resample_filter: Sequence[int] = (1, 1),
        gridtype: str = "sinusoidal",
        N_grid_channels: int = 4,
        checkpoint_level: int = 0,
        additive_pos_embed: bool = False,
        bottleneck_attention: bool = True,
        use_apex_gn: bool = False,
        act: str = "silu",
        profile_mode: bool = False,
        amp_mode: bool = False,
    ) -> None:
        # Every SongUNet argument by keyword (the defaults above are this class's own).
        super().__init__(**{k: v for k, v in locals().items() if k in _SONG_UNET_ARGS})
        self.gridtype, self.N_grid_channels = gridtype, N_grid_channels
        if gridtype == "sinusoidal" and N_grid_channels:
            warnings.warn(
                "gridtype='sinusoidal' uses the legacy frequency bands (not exact octaves); "
                "use 'sinusoidal_octave' for new models and 'sinusoidal' only to load old "
                "checkpoints",
                FutureWarning,
                stacklevel=2,
            )
        if N_grid_channels == 0:
            self.pos_embd = None
        else:
            grid = positional_grid(gridtype, N_grid_channels, (self.img_shape_y, self.img_shape_x))
            if gridtype == "learnable":
                self.pos_embd = nn.Parameter(grid)
            else:
                self.register_buffer("pos_embd", grid, persistent=False)

    def positional_embedding_indexing(
        self, x: torch.Tensor, global_index: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Grid patches for ``x`` (P*B, C, Hp, Wp) at ``global_index``, or the whole grid."""
        grid = self.pos_embd.to(x.dtype)
        if global_index is None:
            return grid[None].expand(x.shape[0], -1, -1, -1)
        return select_patches(grid, global_index, x.shape[0] // global_index.shape[0])

    def positional_embedding_selector(
        self, x: torch.Tensor, embedding_selector: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """Grid patches chosen by ``embedding_selector(grid)`` (P*B, C_PE, Hp, Wp)."""
        return embedding_selector(self.pos_embd.to(x.dtype))

    # PhysicsNeMo's signature (global_index and embedding_selector added to SongUNet's)
    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor,
        noise_labels: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        global_index: torch.Tensor | None = None,
        embedding_selector: Callable[[torch.Tensor], torch.Tensor] | None = None,
        augment_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if embedding_selector is not None and global_index is not None:
            raise ValueError("Cannot provide both embedding_selector and global_index.")
        if self.pos_embd is not None:
            if embedding_selector is not None:
                pe = self.positional_embedding_selector(x, embedding_selector)
            else:
                pe = self.positional_embedding_indexing(x, global_index)
            x = torch.cat([x, pe.to(x.dtype)], dim=1)  # (B, C_in + C_PE, Hp, Wp)
        return super().forward(x, noise_labels, class_labels, augment_labels)
