"""Time-index sampler: sharded by data-parallel rank, shuffled by seed, exactly resumable.

Each epoch has one global order of the time indices: a permutation drawn from
``SeedSequence([seed, epoch])`` (or the identity if ``shuffle=False``). Rank ``r`` of ``world``
data-parallel groups takes global positions ``r, r + world, r + 2 world, ...``, so step ``s``
of all ranks together consumes global positions ``[s * world, (s + 1) * world)`` whatever the
number of ranks, and the samples of a global batch do not depend on how it is split.
``drop_last=True`` drops the last ``n % world`` positions of each epoch (each time index is
used at most once per epoch); ``drop_last=False`` wraps around to the start of the order.

>>> s = TimeSampler(6, rank=1, world=2, shuffle=False)
>>> [r.time_index for r in s.iterate(epochs=1)]
[1, 3, 5]
>>> ref = next(iter(s.iterate(epoch=0, position=2)))
>>> (ref.global_position, ref.time_index, s.state_after(ref))
(5, 5, {'epoch': 1, 'position': 0, 'global_position': 0, 'world': 2})
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SampleRef:
    """One sample drawn by a rank: when in the run, and which time index."""

    epoch: int
    position: int  # position of this rank within the epoch
    global_position: int  # position within the epoch's global order
    time_index: int


class TimeSampler:
    """Seeded, sharded, resumable order of time indices for one data-parallel rank.

    Parameters
    ----------
    indices : the global time indices to draw from, or their count ``n`` (meaning 0..n-1).
    rank, world : this rank's data-parallel group index and the number of groups.
    seed : seed of the per-epoch permutations.
    shuffle : False keeps time order (validation).
    drop_last : drop the positions that do not fill a last step of all ranks.
    """

    def __init__(
        self,
        indices: int | Sequence[int] | np.ndarray,
        *,
        rank: int = 0,
        world: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
    ) -> None:
        if isinstance(indices, (int, np.integer)):
            indices = np.arange(int(indices))
        self.indices = np.asarray(indices, dtype=np.int64)
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"need 0 <= rank < world, got rank={rank}, world={world}")
        if self.indices.size == 0:
            raise ValueError("TimeSampler needs at least one time index")
        self.rank, self.world, self.seed = int(rank), int(world), int(seed)
        self.shuffle, self.drop_last = bool(shuffle), bool(drop_last)
        n = self.indices.size
        self.per_rank = n // world if drop_last else -(-n // world)
        if self.per_rank == 0:
            raise ValueError(f"{n} time indices cannot feed {world} ranks with drop_last=True")

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Global order of time indices in ``epoch`` (the same for every rank count)."""
        if not self.shuffle:
            return self.indices
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, int(epoch)]))
        return self.indices[rng.permutation(self.indices.size)]

    def rank_indices(self, epoch: int) -> np.ndarray:
        """This rank's time indices in ``epoch``, in order."""
        order = self.epoch_order(epoch)
        positions = np.arange(self.per_rank) * self.world + self.rank
        return order[positions % order.size]

    def iterate(
        self, epoch: int = 0, position: int = 0, epochs: int | None = None
    ) -> Iterator[SampleRef]:
        """Samples from ``(epoch, position)`` on; ``epochs`` epochs in total (None: forever)."""
        if not 0 <= position < self.per_rank:
            raise ValueError(f"position must be in [0, {self.per_rank}), got {position}")
        stop = None if epochs is None else epoch + epochs
        while stop is None or epoch < stop:
            mine = self.rank_indices(epoch)
            for p in range(position, self.per_rank):
                yield SampleRef(epoch, p, p * self.world + self.rank, int(mine[p]))
            epoch, position = epoch + 1, 0

    def state_after(self, ref: SampleRef) -> dict:
        """Resume state that continues right after ``ref``."""
        return self.state_at(ref.epoch, ref.position + 1)

    def state_at(self, epoch: int, position: int) -> dict:
        """Resume state that starts at ``position`` of ``epoch`` (wrapping to the next epoch)."""
        if position >= self.per_rank:
            epoch, position = epoch + 1, 0
        return {
            "epoch": epoch,
            "position": position,
            "global_position": position * self.world,
            "world": self.world,
        }

    def resume_point(self, state: Mapping | None) -> tuple[int, int]:
        """``(epoch, position)`` for this rank from a state (possibly saved with another world)."""
        if not state:
            return 0, 0
        epoch, global_position = int(state["epoch"]), int(state["global_position"])
        # At another rank count the position rounds down to a whole step of all ranks: at
        # most world - 1 samples of the epoch are seen again, none is skipped.
        return epoch, global_position // self.world
