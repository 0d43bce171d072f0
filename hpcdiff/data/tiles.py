"""Tile geometry on the global grid: rectangles, margins, domain splits and HDF5 chunk math.

A :class:`Tile` is the half-open rectangle ``rows [row0, row1) x cols [col0, col1)`` of the
global (H, W) grid. Ranks of a domain group own one tile each (row-major over a ``(py, px)``
process grid); reads cover the tile grown by a margin, so patches can cross tile edges.

>>> t = tile_for_rank((100, 60), (2, 2), rank=3)
>>> t
Tile(row0=50, row1=100, col0=30, col1=60)
>>> t.grow(8, (100, 60))
Tile(row0=42, row1=100, col0=22, col1=60)
>>> t.chunk_span((1, 32, 32))
((1, 4), (0, 2))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Tile:
    """Rectangle ``rows [row0, row1) x cols [col0, col1)`` of the global grid."""

    row0: int
    row1: int
    col0: int
    col1: int

    def __post_init__(self) -> None:
        for name in ("row0", "row1", "col0", "col1"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"Tile.{name} must be a non-negative int, got {value!r}")
        if self.row1 <= self.row0 or self.col1 <= self.col0:
            raise ValueError(f"Tile must be non-empty, got {self}")

    @classmethod
    def full(cls, grid_shape: Sequence[int]) -> Tile:
        """The whole ``(H, W)`` grid."""
        return cls(0, int(grid_shape[0]), 0, int(grid_shape[1]))

    @classmethod
    def at(cls, origin: Sequence[int], shape: Sequence[int]) -> Tile:
        """The tile with top-left corner ``origin = (row, col)`` and ``shape = (h, w)``."""
        r, c = int(origin[0]), int(origin[1])
        return cls(r, r + int(shape[0]), c, c + int(shape[1]))

    @property
    def shape(self) -> tuple[int, int]:
        return (self.row1 - self.row0, self.col1 - self.col0)

    @property
    def origin(self) -> tuple[int, int]:
        return (self.row0, self.col0)

    def slices(self) -> tuple[slice, slice]:
        return (slice(self.row0, self.row1), slice(self.col0, self.col1))

    def contains(self, other: Tile) -> bool:
        return (
            self.row0 <= other.row0
            and other.row1 <= self.row1
            and self.col0 <= other.col0
            and other.col1 <= self.col1
        )

    def within(self, grid_shape: Sequence[int]) -> bool:
        return self.row1 <= grid_shape[0] and self.col1 <= grid_shape[1]

    def grow(self, margin: int | Sequence[int], grid_shape: Sequence[int]) -> Tile:
        """This tile grown by ``margin`` cells (or ``(rows, cols)``) on each side, clipped."""
        my, mx = (margin, margin) if isinstance(margin, int) else (margin[0], margin[1])
        if my < 0 or mx < 0:
            raise ValueError(f"margin must be >= 0, got {margin!r}")
        return Tile(
            max(self.row0 - my, 0),
            min(self.row1 + my, int(grid_shape[0])),
            max(self.col0 - mx, 0),
            min(self.col1 + mx, int(grid_shape[1])),
        )

    def relative_to(self, outer: Tile) -> Tile:
        """This tile in the local coordinates of ``outer`` (which must contain it)."""
        if not outer.contains(self):
            raise ValueError(f"{self} is not inside {outer}")
        return Tile(
            self.row0 - outer.row0,
            self.row1 - outer.row0,
            self.col0 - outer.col0,
            self.col1 - outer.col0,
        )

    def chunk_span(self, chunks: Sequence[int]) -> tuple[tuple[int, int], tuple[int, int]]:
        """Half-open ranges of chunk indices along (y, x) touched by this tile.

        ``chunks`` is a variable's HDF5 chunk shape; its last two entries are (y, x).
        """
        cy, cx = int(chunks[-2]), int(chunks[-1])
        rows = (self.row0 // cy, -(-self.row1 // cy))
        cols = (self.col0 // cx, -(-self.col1 // cx))
        return rows, cols

    def n_chunks(self, chunks: Sequence[int]) -> int:
        """Number of (y, x) chunks one time step of a read of this tile decodes."""
        (r0, r1), (c0, c1) = self.chunk_span(chunks)
        return (r1 - r0) * (c1 - c0)

    def aligned(self, chunks: Sequence[int], grid_shape: Sequence[int]) -> Tile:
        """The smallest chunk-aligned tile (clipped to the grid) containing this one."""
        cy, cx = int(chunks[-2]), int(chunks[-1])
        (r0, r1), (c0, c1) = self.chunk_span(chunks)
        return Tile(
            r0 * cy, min(r1 * cy, int(grid_shape[0])), c0 * cx, min(c1 * cx, int(grid_shape[1]))
        )


def _bounds(n: int, parts: int, align: int) -> list[int]:
    """Balanced split points of ``range(n)`` into ``parts``, on multiples of ``align``."""
    units = -(-n // align)
    if parts > units:
        raise ValueError(f"cannot split {n} cells (align {align}) into {parts} parts")
    return [min((i * units // parts) * align, n) for i in range(parts + 1)]


def split_domain(
    grid_shape: Sequence[int], process_grid: Sequence[int], align: int | Sequence[int] = 1
) -> list[Tile]:
    """Tiles of a ``(py, px)`` process grid over ``(H, W)``, row-major (rank = iy * px + ix).

    ``align`` (cells, or ``(rows, cols)``) puts tile edges on multiples of the HDF5 chunk shape
    where possible, so that each tile decodes only its own chunks.
    """
    py, px = int(process_grid[0]), int(process_grid[1])
    if py < 1 or px < 1:
        raise ValueError(f"process_grid must be positive, got {tuple(process_grid)}")
    ay, ax = (align, align) if isinstance(align, int) else (int(align[0]), int(align[1]))
    rows = _bounds(int(grid_shape[0]), py, ay)
    cols = _bounds(int(grid_shape[1]), px, ax)
    return [Tile(rows[i], rows[i + 1], cols[j], cols[j + 1]) for i in range(py) for j in range(px)]


def tile_for_rank(
    grid_shape: Sequence[int],
    process_grid: Sequence[int],
    rank: int,
    align: int | Sequence[int] = 1,
) -> Tile:
    """The tile owned by domain rank ``rank`` (row-major) of a ``(py, px)`` process grid."""
    tiles = split_domain(grid_shape, process_grid, align)
    if not 0 <= rank < len(tiles):
        raise ValueError(f"rank must be in [0, {len(tiles)}), got {rank}")
    return tiles[rank]
