"""Process mesh for domain decomposition and the halo exchange between tiles.

The world is ``data groups x domain groups``: ranks ``g D .. g D + D - 1`` (D = py px) form
data group ``g`` and split one global (H, W) field into the tiles of a ``(py, px)`` process
grid (row-major, :func:`hpcdiff.data.tiles.split_domain`). A rank holds its tile of each
field; the halo exchange moves only the rectangles where one rank's tile meets another rank's
region of interest (point-to-point ``isend`` / ``irecv`` on gloo or nccl).

>>> mesh = DomainMesh.single((10, 7))
>>> mesh.tile, mesh.domain_size
(Tile(row0=0, row1=10, col0=0, col1=7), 1)
>>> intersect(Tile(0, 4, 0, 4), Tile(2, 6, 3, 9))
Tile(row0=2, row1=4, col0=3, col1=4)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from hpcdiff import nvtx
from hpcdiff.data.tiles import Tile, split_domain

Tensor = torch.Tensor


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


def _exchange(sends: list[tuple[int, Tensor]], recvs: list[tuple[int, Tensor]]) -> None:
    """Post every send and receive (global peer ranks), then wait for all of them."""
    HaloStats.sent_bytes += sum(t.numel() * t.element_size() for _, t in sends)
    works = [dist.isend(t.contiguous(), peer) for peer, t in sends]
    works += [dist.irecv(t, peer) for peer, t in recvs]
    for work in works:
        work.wait()


def gather_region(local: Tensor, mesh: DomainMesh, regions: Sequence[Tile | None]) -> Tensor:
    """Halo exchange of values: from the tiles ``local`` (B, C, h, w) of all domain ranks,
    assemble on every rank the field on its own ``regions[domain_rank]`` (B, C, h', w')."""
    me = mesh.domain_rank
    want = regions[me]
    B, C = local.shape[:2]
    out = local.new_empty((B, C, *want.shape)) if want is not None else local.new_empty(0)
    own = intersect(mesh.tile, want)
    if own is not None:
        _local(out, own, want).copy_(_local(local, own, mesh.tile))
    if mesh.domain_size == 1:
        return out
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
    with nvtx.range("comm.halo"):
        _exchange(sends, recvs)
    for take, buf in blocks:
        _local(out, take, want).copy_(buf)
    return out


def reduce_regions(
    acc: Tensor | None, mesh: DomainMesh, regions: Sequence[Tile | None], out: Tensor
) -> Tensor:
    """Reverse halo exchange: every rank's partial sums ``acc`` (B, C, h', w') over its
    ``regions[domain_rank]`` are added, in domain-rank order, into the owners' tiles ``out``
    (B, C, h, w), in place."""
    me = mesh.domain_rank
    mine = regions[me]
    B, C = out.shape[:2]
    sends, recvs, blocks = [], [], []
    for r in range(mesh.domain_size):
        part = intersect(regions[r], mesh.tile)
        if r == me:
            if part is not None:
                blocks.append((part, _local(acc, part, mine)))
            continue
        give = intersect(mine, mesh.tiles[r])
        if give is not None:
            sends.append((mesh.global_rank(r), _local(acc, give, mine)))
        if part is not None:
            buf = out.new_empty((B, C, *part.shape))
            recvs.append((mesh.global_rank(r), buf))
            blocks.append((part, buf))
    if mesh.domain_size > 1:
        with nvtx.range("comm.halo"):
            _exchange(sends, recvs)
    for part, values in blocks:
        _local(out, part, mesh.tile).add_(values)
    return out
