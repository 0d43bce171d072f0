"""TimeSampler: sharding covers each time once per epoch, exact resume, rank-count invariance."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from hpcdiff.data.sampler import TimeSampler


def epoch(sampler: TimeSampler, e: int) -> list[int]:
    return [r.time_index for r in sampler.iterate(epoch=e, epochs=1)]


@pytest.mark.parametrize("world", [2, 4])
def test_ranks_cover_each_time_once_per_epoch(world):
    times = np.arange(100, 124)  # 24 indices, divisible by 2 and 4
    for e in range(3):
        per_rank = [epoch(TimeSampler(times, rank=r, world=world, seed=5), e) for r in range(world)]
        flat = sorted(itertools.chain(*per_rank))
        assert flat == list(times)
        assert all(len(p) == 24 // world for p in per_rank)


def test_epochs_are_shuffled_differently_and_deterministically():
    s = TimeSampler(50, seed=1)
    assert epoch(s, 0) != epoch(s, 1) and sorted(epoch(s, 0)) == list(range(50))
    assert epoch(s, 0) == epoch(TimeSampler(50, seed=1), 0)
    assert epoch(s, 0) != epoch(TimeSampler(50, seed=2), 0)


def test_drop_last_uses_each_time_at_most_once():
    per_rank = [epoch(TimeSampler(13, rank=r, world=4, seed=0), 0) for r in range(4)]
    flat = list(itertools.chain(*per_rank))
    assert len(flat) == 12 and len(set(flat)) == 12
    padded = [epoch(TimeSampler(13, rank=r, world=4, drop_last=False), 0) for r in range(4)]
    assert sorted(set(itertools.chain(*padded))) == list(range(13))


def test_global_steps_do_not_depend_on_rank_count():
    """Step s of all ranks together consumes the same samples for 1, 2 or 4 ranks."""
    global_batch = 4

    def steps(world: int) -> list[set]:
        per = global_batch // world
        streams = [
            [r.time_index for r in TimeSampler(40, rank=k, world=world, seed=3).iterate(epochs=2)]
            for k in range(world)
        ]
        n_steps = len(streams[0]) // per
        return [set().union(*(s[i * per : (i + 1) * per] for s in streams)) for i in range(n_steps)]

    assert steps(1) == steps(2) == steps(4)


def test_resume_is_exact():
    s = TimeSampler(30, rank=1, world=3, seed=9)
    run = list(itertools.islice(s.iterate(), 25))  # crosses an epoch boundary (10 per epoch)
    for k in (0, 7, 9, 10, 19):
        state = s.state_after(run[k])
        epoch_, position = s.resume_point(state)
        resumed = list(itertools.islice(s.iterate(epoch_, position), 25 - k - 1))
        assert resumed == run[k + 1 :]


def test_resume_with_another_rank_count():
    one = TimeSampler(24, seed=4)
    run = list(itertools.islice(one.iterate(), 12))
    state = one.state_after(run[7])  # 8 samples consumed
    two = [TimeSampler(24, rank=r, world=2, seed=4) for r in range(2)]
    nxt = [next(iter(s.iterate(*s.resume_point(state)))).time_index for s in two]
    assert nxt == [r.time_index for r in run[8:10]]
    # 7 consumed, 3 ranks: rounded down to 6, so one sample is seen again and none skipped
    three = [TimeSampler(24, rank=r, world=3, seed=4) for r in range(3)]
    nxt = [next(iter(s.iterate(*s.resume_point(one.state_after(run[6]))))) for s in three]
    assert [r.time_index for r in nxt] == [r.time_index for r in run[6:9]]


def test_bad_arguments():
    with pytest.raises(ValueError, match="rank"):
        TimeSampler(10, rank=2, world=2)
    with pytest.raises(ValueError, match="at least one"):
        TimeSampler([])
    with pytest.raises(ValueError, match="cannot feed"):
        TimeSampler(3, world=4)
