"""Process mesh for domain decomposition, the halo exchange between tiles, and noise that does
not depend on the decomposition.

The world is ``data groups x domain groups``: ranks ``g D .. g D + D - 1`` (D = py px) form
data group ``g`` and split one global (H, W) field into the tiles of a ``(py, px)`` process
grid (row-major, :func:`hpcdiff.data.tiles.split_domain`). A rank holds its tile of each
field; the halo exchange moves only the rectangles where one rank's tile meets another rank's
region of interest (point-to-point ``isend`` / ``irecv`` on gloo or nccl). Noise is drawn in
fixed blocks of the global grid keyed by (seed, block), never by rank
(:func:`block_noise`, :class:`DomainDecomposedNoiseScheduler`).

>>> mesh = DomainMesh.single((10, 7))
>>> mesh.tile, mesh.domain_size
(Tile(row0=0, row1=10, col0=0, col1=7), 1)
>>> intersect(Tile(0, 4, 0, 4), Tile(2, 6, 3, 9))
Tile(row0=2, row1=4, col0=3, col1=4)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from hpcdiff import nvtx
from hpcdiff.data.tiles import Tile, split_domain

Tensor = torch.Tensor
NOISE_BLOCK = 64


def intersect(a: Tile | None, b: Tile | None) -> Tile | None:
    """The common rectangle of two tiles, or None when they do not overlap."""
    if a is None or b is None:
        return None
    r0, r1 = max(a.row0, b.row0), min(a.row1, b.row1)
    c0, c1 = max(a.col0, b.col0), min(a.col1, b.col1)
    return Tile(r0, r1, c0, c1) if r0 < r1 and c0 < c1 else None


def _local(t: Tensor, part: Tile, frame: Tile) -> Tensor:
    """View of ``t`` (..., h, w), which covers ``frame``, restricted to ``part``."""
    rows, cols = part.relative_to(frame).slices()
    return t[..., rows, cols]


@dataclass(frozen=True)
class DomainMesh:
    """This rank's place in ``world = data groups x domain groups`` over an (H, W) grid.

    Parameters
    ----------
    grid : (py, px)
        Process grid of one domain group; ``D = py px`` ranks share one global sample.
    shape : (H, W)
        Global grid.
    rank, world : int
        Global rank and world size (``world`` must be a multiple of D).
    """

    grid: tuple[int, int]
    shape: tuple[int, int]
    rank: int = 0
    world: int = 1
    tiles: tuple[Tile, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        py, px = self.grid
        if py < 1 or px < 1:
            raise ValueError(f"domain grid must be positive, got {tuple(self.grid)}")
        if self.world % (py * px) != 0:
            raise ValueError(
                f"world size {self.world} is not a multiple of the domain grid "
                f"{py}x{px} = {py * px} ranks"
            )
        object.__setattr__(self, "tiles", tuple(split_domain(self.shape, self.grid)))

    @classmethod
    def single(cls, shape: Sequence[int]) -> DomainMesh:
        """One process holding the whole grid."""
        return cls((1, 1), (int(shape[0]), int(shape[1])))

    @classmethod
    def from_process_group(cls, grid: Sequence[int], shape: Sequence[int]) -> DomainMesh:
        """The mesh of this rank in the running process group (one process without one)."""
        rank, world = 0, 1
        if dist.is_available() and dist.is_initialized():
            rank, world = dist.get_rank(), dist.get_world_size()
        return cls((int(grid[0]), int(grid[1])), (int(shape[0]), int(shape[1])), rank, world)

    @property
    def domain_size(self) -> int:
        """Ranks D per domain group."""
        return self.grid[0] * self.grid[1]

    @property
    def data_group(self) -> int:
        """Index of this rank's data group (which global samples it works on)."""
        return self.rank // self.domain_size

    @property
    def data_groups(self) -> int:
        return self.world // self.domain_size

    @property
    def domain_rank(self) -> int:
        """Rank within the domain group; owns ``tiles[domain_rank]``."""
        return self.rank % self.domain_size

    @property
    def tile(self) -> Tile:
        return self.tiles[self.domain_rank]

    def global_rank(self, domain_rank: int) -> int:
        """Global rank of member ``domain_rank`` of this rank's domain group."""
        return self.data_group * self.domain_size + domain_rank

    def neighbours(self, margin: int | Sequence[int]) -> list[int]:
        """Domain ranks (not this one) whose tiles meet this tile grown by ``margin``."""
        grown = self.tile.grow(margin, self.shape)
        me = self.domain_rank
        return [r for r, t in enumerate(self.tiles) if r != me and intersect(grown, t)]


class HaloStats:
    """Bytes this process has sent in halo exchanges (for benchmarks and reports)."""

    sent_bytes: int = 0


def _post(sends: list[tuple[int, Tensor]], recvs: list[tuple[int, Tensor]]) -> list:
    """Post every send and receive (global peer ranks) without waiting; their work handles.
    The send tensors are kept in the handles' list so they outlive the transfer."""
    HaloStats.sent_bytes += sum(t.numel() * t.element_size() for _, t in sends)
    sends = [(peer, t.contiguous()) for peer, t in sends]
    works = [dist.isend(t, peer) for peer, t in sends]
    works += [dist.irecv(t, peer) for peer, t in recvs]
    return [works, sends]


def _wait(posted: list) -> None:
    with nvtx.range("comm.halo"):
        for work in posted[0]:
            work.wait()


class PendingRegion:
    """A halo gather in flight (:func:`start_gather`); :meth:`wait` returns its region."""

    def __init__(self, out: Tensor, want: Tile | None, posted: list, blocks: list) -> None:
        self._out, self._want, self._posted, self._blocks = out, want, posted, blocks

    def wait(self) -> Tensor:
        """Finish the receives and return the region (B, C, h', w')."""
        if self._posted:
            _wait(self._posted)
            for take, buf in self._blocks:
                _local(self._out, take, self._want).copy_(buf)
            self._posted, self._blocks = [], []
        return self._out


def start_gather(local: Tensor, mesh: DomainMesh, regions: Sequence[Tile | None]) -> PendingRegion:
    """Post the halo exchange of values that assembles, from the tiles ``local`` (B, C, h, w)
    of all domain ranks, the field on every rank's ``regions[domain_rank]``; compute can run
    until :meth:`PendingRegion.wait`."""
    me = mesh.domain_rank
    want = regions[me]
    B, C = local.shape[:2]
    out = local.new_empty((B, C, *want.shape)) if want is not None else local.new_empty(0)
    own = intersect(mesh.tile, want)
    if own is not None:
        _local(out, own, want).copy_(_local(local, own, mesh.tile))
    if mesh.domain_size == 1:
        return PendingRegion(out, want, [], [])
    sends, recvs, blocks = [], [], []
    for r, tile in enumerate(mesh.tiles):
        if r == me:
            continue
        give = intersect(mesh.tile, regions[r])
        if give is not None:
            sends.append((mesh.global_rank(r), _local(local, give, mesh.tile)))
        take = intersect(tile, want)
        if take is not None:
            buf = local.new_empty((B, C, *take.shape))
            recvs.append((mesh.global_rank(r), buf))
            blocks.append((take, buf))
    return PendingRegion(out, want, _post(sends, recvs), blocks)


def gather_region(local: Tensor, mesh: DomainMesh, regions: Sequence[Tile | None]) -> Tensor:
    """Halo exchange of values: from the tiles ``local`` (B, C, h, w) of all domain ranks,
    assemble on every rank the field on its own ``regions[domain_rank]`` (B, C, h', w')."""
    return start_gather(local, mesh, regions).wait()


def reduce_regions(
    acc: Tensor, frame: Tile, mesh: DomainMesh, regions: Sequence[Tile | None]
) -> Tensor:
    """Reverse halo exchange: every rank's partial sums ``acc`` (B, C, h', w') over ``frame``
    (which contains its tile and ``regions[domain_rank]``, where the sums may be non-zero)
    are added, in domain-rank order, into their owners' tiles; returns the view of ``acc``
    on this rank's tile, which then holds the total."""
    me, tile = mesh.domain_rank, mesh.tile
    B, C = acc.shape[:2]
    sends, recvs, blocks = [], [], []
    for r in range(mesh.domain_size):
        if r == me:
            continue
        give = intersect(regions[me], mesh.tiles[r])
        if give is not None:
            sends.append((mesh.global_rank(r), _local(acc, give, frame)))
        part = intersect(regions[r], tile)
        if part is not None:
            buf = acc.new_empty((B, C, *part.shape))
            recvs.append((mesh.global_rank(r), buf))
            blocks.append((part, buf))
    if sends or recvs:
        _wait(_post(sends, recvs))
    for part, values in blocks:
        _local(acc, part, frame).add_(values)
    return _local(acc, tile, frame)


def broadcast_in_group(t: Tensor, mesh: DomainMesh) -> Tensor:
    """``t`` of the domain group's first rank, on every rank of the group (in place)."""
    if mesh.domain_size == 1:
        return t
    lead = mesh.global_rank(0)
    if mesh.domain_rank == 0:
        works = [dist.isend(t, mesh.global_rank(r)) for r in range(1, mesh.domain_size)]
    else:
        works = [dist.irecv(t, lead)]
    for work in works:
        work.wait()
    return t


def sum_in_group(t: Tensor, mesh: DomainMesh) -> Tensor:
    """The sum of ``t`` over the ranks of the domain group, added in domain-rank order on the
    group's first rank and sent back, so every rank gets the same bits."""
    if mesh.domain_size == 1:
        return t
    lead = mesh.global_rank(0)
    if mesh.domain_rank == 0:
        parts = [torch.empty_like(t) for _ in range(1, mesh.domain_size)]
        works = [dist.irecv(p, mesh.global_rank(r)) for r, p in enumerate(parts, start=1)]
        for work in works:
            work.wait()
        total = t.clone()
        for part in parts:
            total += part
    else:
        dist.send(t.contiguous(), lead)
        total = torch.empty_like(t)
    return broadcast_in_group(total, mesh)


def _block_seed(seed: int, stream: int, by: int, bx: int) -> int:
    """A 63-bit generator seed for noise block (by, bx) of draw ``stream`` of sample ``seed``."""
    state = np.random.SeedSequence([int(seed), stream, by, bx]).generate_state(2, np.uint64)
    return int(state[0]) & (2**63 - 1)


def block_noise(
    seeds: Sequence[int], channels: int, tile: Tile, block: int = NOISE_BLOCK,
    dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu", stream: int = 0,
) -> Tensor:  # fmt: skip
    """Standard normal noise (E, C, h, w) on ``tile`` of the global grid, E = len(seeds): each
    (block x block) square of the global grid draws from its own generator seeded by (seed,
    ``stream``, block row, block col), so any decomposition yields the same global field;
    ``stream`` numbers the draws of one sampling run (0: initial latents)."""
    out = torch.empty((len(seeds), channels, *tile.shape), dtype=dtype)
    for by in range(tile.row0 // block, -(-tile.row1 // block)):
        for bx in range(tile.col0 // block, -(-tile.col1 // block)):
            square = Tile.at((by * block, bx * block), (block, block))
            part = intersect(square, tile)
            src, dst = part.relative_to(square).slices(), part.relative_to(tile).slices()
            for e, seed in enumerate(seeds):
                gen = torch.Generator().manual_seed(_block_seed(seed, stream, by, bx))
                z = torch.randn((channels, block, block), generator=gen, dtype=dtype)
                out[e, :, dst[0], dst[1]] = z[:, src[0], src[1]]
    return out.to(device)


class DomainDecomposedNoiseScheduler:
    """A noise scheduler over the tiles of a domain group (cf. the reference's domain-parallel
    scheduler): the tiles of one sample share its noise level, not its noise field. The
    wrapped scheduler's math is unchanged and single-device.

    * :meth:`sample_time`: the group's first rank draws, the others receive its times.
    * :meth:`init_latents`: this rank's tile of x_N = sigma(t_N) eps, eps from
      :func:`block_noise` keyed by (sample seed, global position): every tiling gives the
      same global x_N.
    * :meth:`add_noise`: alpha(t) x0 + sigma(t) eps on the tile, eps from this rank's
      generator (seed ranks differently, as the trainer does, so tiles draw independently).
    * Everything else (``timesteps``, ``loss_weight``, ``get_denoiser``, ``sigma`` ...): the
      wrapped scheduler's.

    Parameters
    ----------
    scheduler : LinearGaussianNoiseScheduler
    mesh : DomainMesh
        This rank's tile; ``mesh.shape`` is the global (H, W).
    seeds : sequence of int, optional
        One seed per sample of the batch; needed by :meth:`init_latents`.

    >>> from hpcdiff.diffusion.noise_schedulers import EDMNoiseScheduler
    >>> s = DomainDecomposedNoiseScheduler(EDMNoiseScheduler(), DomainMesh.single((8, 6)), [3])
    >>> s.init_latents((2, 8, 6), s.timesteps(4)[:1]).shape
    torch.Size([1, 2, 8, 6])
    """

    def __init__(self, scheduler: Any, mesh: DomainMesh, seeds: Sequence[int] | None = None):
        from hpcdiff.diffusion.noise_schedulers import LinearGaussianNoiseScheduler

        if not isinstance(scheduler, LinearGaussianNoiseScheduler):
            raise ValueError(
                "DomainDecomposedNoiseScheduler only wraps LinearGaussianNoiseScheduler, got "
                f"{type(scheduler).__name__}."
            )
        self._inner, self.mesh = scheduler, mesh
        self.seeds = None if seeds is None else [int(s) for s in seeds]

    @property
    def inner_scheduler(self) -> Any:
        """The wrapped scheduler."""
        return self._inner

    def __getattr__(self, name: str) -> Any:
        if name == "_inner":  # not yet set (copy / unpickle)
            raise AttributeError(name)
        return getattr(self._inner, name)

    def sample_time(
        self, N: int, *, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> Tensor:
        """N times (N,) drawn by the domain group's first rank, identical on its tiles."""
        t = self._inner.sample_time(N, device=device, dtype=dtype)
        return broadcast_in_group(t.contiguous(), self.mesh)

    def add_noise(self, x0: Tensor, time: Tensor) -> Tensor:
        """x_t = alpha(t) x0 + sigma(t) eps on this rank's tile ``x0`` (B, C, h, w)."""
        return self._inner.add_noise(x0, time)

    def init_latents(
        self,
        spatial_shape: tuple[int, ...],
        tN: Tensor,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        """This rank's tile (B, C, h, w) of x_N = sigma(t_N) eps over the global
        ``spatial_shape`` (C, H, W), eps from :func:`block_noise` of ``seeds``."""
        from hpcdiff.diffusion.noise_schedulers import LinearGaussianNoiseScheduler

        inner = type(self._inner)
        if inner.init_latents is not LinearGaussianNoiseScheduler.init_latents:
            raise ValueError(
                f"{inner.__name__} draws non-Gaussian initial latents; tiled sampling "
                "supports schedulers with Gaussian latents"
            )
        C, *grid = spatial_shape
        if tuple(grid) != tuple(self.mesh.shape):
            raise ValueError(
                f"spatial_shape {tuple(spatial_shape)} does not match (C, H, W) with the "
                f"mesh's global grid {tuple(self.mesh.shape)}"
            )
        if self.seeds is None or len(self.seeds) != tN.shape[0]:
            raise ValueError(
                f"init_latents needs one seed per sample: tN has {tN.shape[0]} samples, "
                f"seeds={self.seeds}"
            )
        dtype = torch.get_default_dtype() if dtype is None else dtype
        device = tN.device if device is None else device
        eps = block_noise(self.seeds, C, self.mesh.tile, dtype=dtype, device=device)
        return self._inner.sigma(tN.to(device).reshape(-1, 1, 1, 1)) * eps

    def timesteps(
        self,
        num_steps: int,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        """The wrapped scheduler's time grid (the same on every rank)."""
        return self._inner.timesteps(num_steps, device=device, dtype=dtype)

    def loss_weight(self, t: Tensor) -> Tensor:
        return self._inner.loss_weight(t)

    def get_denoiser(self, **kwargs: Any) -> Any:
        """The wrapped scheduler's denoiser (pointwise in space: it works on tiles)."""
        return self._inner.get_denoiser(**kwargs)
