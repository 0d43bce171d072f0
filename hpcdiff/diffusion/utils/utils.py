"""Per-sample seeded noise, an infinite (resumable) data sampler and small tensor helpers."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

import numpy as np
import torch

_T = TypeVar("_T")
_DRAW_CHUNK = 1 << 16  # window-shuffle offsets drawn per numpy call (same stream as one by one)


def _unwrap_module(model: torch.nn.Module, target_cls: type[_T]) -> _T:
    """Strip ``torch.compile`` (``_orig_mod``) and DDP-style (``.module``) wrappers down to
    an instance of ``target_cls``; TypeError if a leaf of another type is reached."""
    m: Any = model
    while not isinstance(m, target_cls):
        if isinstance(m, torch._dynamo.eval_frame.OptimizedModule):
            m = m._orig_mod
        elif hasattr(m, "module"):
            m = m.module
        else:
            raise TypeError(
                f"cannot unwrap a {target_cls.__name__} from {type(model).__name__}: "
                f"reached leaf type {type(m).__name__}"
            )
    return m


def apply_loss_weight(w: torch.Tensor, data_ndim: int) -> torch.Tensor:
    """Pad a loss weight (B,) or per-channel (B, C) with trailing 1s to ``data_ndim`` dims."""
    return w.reshape(*w.shape, *([1] * (data_ndim - w.ndim)))


def _as_broadcastable(x: float | torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``x`` as a tensor that broadcasts to ``y.shape`` (ValueError otherwise)."""
    x = torch.as_tensor(x)
    try:
        ok = torch.broadcast_shapes(x.shape, y.shape) == y.shape
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(
            f"tensor of shape {tuple(x.shape)} must broadcast to shape {tuple(y.shape)}"
        )
    return x


class StackedRandomGenerator:
    """One ``torch.Generator`` per batch element (EDM's per-seed noise, Karras et al. 2022).

    Row ``i`` of every draw comes from ``seeds[i]`` alone, so a sample's noise does not depend
    on which other samples share its batch (nor on how many ranks split the batch).

    Parameters
    ----------
    device : torch.device
        Device of the generators (and of the draws).
    seeds : Sequence[int]
        One seed per batch element (taken modulo 2**32); its length is the batch size B.

    >>> rnd = StackedRandomGenerator("cpu", [7, 8])
    >>> a = rnd.randn((2, 3))
    >>> torch.equal(a[1], StackedRandomGenerator("cpu", [8]).randn((1, 3))[0])
    True
    """

    def __init__(self, device: torch.device | str, seeds: Sequence[int]) -> None:
        self.generators = [
            torch.Generator(device).manual_seed(int(seed) % (1 << 32)) for seed in seeds
        ]

    def _check_batch(self, size: Sequence[int]) -> None:
        if size[0] != len(self.generators):
            raise ValueError(
                f"size[0] must equal the number of seeds ({len(self.generators)}), "
                f"got size={tuple(size)}"
            )

    def randn(self, size: torch.Size | Sequence[int], **kwargs: Any) -> torch.Tensor:
        """Standard normal draws of shape ``size`` (B, *); row i from generator i."""
        self._check_batch(size)
        requires_grad = kwargs.pop("requires_grad", False)
        out = torch.empty(tuple(size), **kwargs)  # (B, *)
        for row, gen in zip(out, self.generators):
            row.normal_(generator=gen)  # same stream as torch.randn(size[1:], generator=gen)
        return out.requires_grad_(requires_grad)

    def randt(self, nu: int, size: torch.Size | Sequence[int], **kwargs: Any) -> torch.Tensor:
        """Student-t draws eps / sqrt(kappa), kappa ~ chi2(nu)/nu per sample (nu > 2).

        As in the reference, kappa comes from torch's global generator (seed it with
        ``torch.manual_seed`` for reproducibility); eps comes from the per-sample generators.
        """
        self._check_batch(size)
        if nu <= 2:
            raise ValueError(f"nu must be > 2, got nu={nu}")
        kappa = torch.distributions.Chi2(nu).sample((len(self.generators),)) / nu  # (B,)
        kappa = kappa.reshape(-1, *([1] * (len(size) - 1))).to(self.generators[0].device)
        eps = self.randn(size, **kwargs)
        return eps / torch.sqrt(kappa)

    def randn_like(self, input: torch.Tensor) -> torch.Tensor:
        """Standard normal draws with the shape, dtype, layout and device of ``input``."""
        return self.randn(input.shape, dtype=input.dtype, layout=input.layout, device=input.device)

    def randint(self, *args: Any, size: torch.Size | Sequence[int], **kwargs: Any) -> torch.Tensor:
        """``torch.randint(*args, size=size[1:])`` per generator, stacked to shape ``size``."""
        self._check_batch(size)
        return torch.stack(
            [
                torch.randint(*args, size=tuple(size[1:]), generator=gen, **kwargs)
                for gen in self.generators
            ]
        )


class InfiniteSampler(torch.utils.data.Sampler[int]):
    """Endless index stream over a dataset with a sliding-window shuffle (as in NVlabs/edm).

    Global position ``idx`` runs from ``start_idx``; rank ``r`` of ``num_replicas`` yields the
    index at positions with ``idx % num_replicas == r``. With ``shuffle``, the order starts as a
    permutation seeded by ``seed``, and after every position the current slot is swapped with a
    random one up to ``window_size * len(dataset)`` slots behind it.

    ``start_idx`` restarts from a fresh permutation, as the reference does. For an exact
    resume (the same remaining stream the interrupted run would have seen), save
    ``state_dict()`` and restore it with ``load_state_dict``: the window swaps are replayed.

    >>> s = InfiniteSampler(range(4), shuffle=False)
    >>> it = iter(s)
    >>> [next(it) for _ in range(6)]
    [0, 1, 2, 3, 0, 1]
    >>> state = s.state_dict()
    >>> r = InfiniteSampler(range(4), shuffle=False)
    >>> r.load_state_dict(state)
    >>> next(iter(r))
    2
    """

    def __init__(
        self,
        dataset: torch.utils.data.Dataset,
        rank: int = 0,
        num_replicas: int = 1,
        shuffle: bool = True,
        seed: int = 0,
        window_size: float = 0.5,
        start_idx: int = 0,
    ) -> None:
        if not len(dataset) > 0:
            raise ValueError(f"dataset must contain at least one item, got len={len(dataset)}")
        if not num_replicas > 0:
            raise ValueError(f"num_replicas must be positive, got {num_replicas}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, num_replicas={num_replicas}), got {rank}")
        if not 0 <= window_size <= 1:
            raise ValueError(f"window_size must be between 0 and 1, got {window_size}")
        super().__init__()
        self.dataset = dataset
        self.rank = rank
        self.num_replicas = num_replicas
        self.shuffle = shuffle
        self.seed = seed
        self.window_size = window_size
        self.start_idx = start_idx
        self._resume_consumed = 0  # indices this rank had consumed when the stream resumes
        self._num_consumed = 0  # indices yielded to this rank so far (latest iterator)

    def _position(self, num_consumed: int) -> int:
        """Global position of this rank's ``num_consumed``-th index (0-based)."""
        first = self.start_idx + (self.rank - self.start_idx) % self.num_replicas
        return first + num_consumed * self.num_replicas

    def __iter__(self) -> Iterator[int]:
        n = len(self.dataset)
        order = list(range(n))
        rnd, window = None, 0
        if self.shuffle:
            rnd = np.random.RandomState(self.seed)
            perm = np.arange(n)
            rnd.shuffle(perm)
            order = perm.tolist()
            window = int(np.rint(n * self.window_size))
        idx = self.start_idx
        stop = self._position(self._resume_consumed)
        if window >= 2:  # replay the swaps of positions [start_idx, stop) without yielding
            while idx < stop:
                m = min(_DRAW_CHUNK, stop - idx)
                i = np.arange(idx, idx + m) % n
                j = (i - rnd.randint(window, size=m)) % n
                for a, b in zip(i.tolist(), j.tolist()):
                    order[a], order[b] = order[b], order[a]
                idx += m
        idx = stop
        self._num_consumed = self._resume_consumed
        yield from self._stream(order, rnd, window, idx, n)

    def _stream(self, order: list[int], rnd, window: int, idx: int, n: int) -> Iterator[int]:
        draws: list[int] = []
        while True:
            i = idx % n
            if idx % self.num_replicas == self.rank:
                self._num_consumed += 1
                yield order[i]
            if window >= 2:
                if not draws:
                    draws = rnd.randint(window, size=_DRAW_CHUNK).tolist()[::-1]
                j = (i - draws.pop()) % n
                order[i], order[j] = order[j], order[i]
            idx += 1

    def state_dict(self, num_consumed: int | None = None) -> dict[str, Any]:
        """Resume point: ``num_consumed`` indices taken by this rank since ``start_idx``.

        Defaults to the count yielded by the latest iterator (exact when iterated lazily, e.g.
        a DataLoader with ``num_workers=0``); with prefetching workers pass the count the
        training loop actually consumed (steps x per-rank batch size).
        """
        count = self._num_consumed if num_consumed is None else int(num_consumed)
        if count < 0:
            raise ValueError(f"num_consumed must be >= 0, got {count}")
        return {
            "num_consumed": count,
            "start_idx": self.start_idx,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "window_size": self.window_size,
            "num_replicas": self.num_replicas,
            "dataset_len": len(self.dataset),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the stream exactly after ``state["num_consumed"]`` indices of this rank."""
        mine = self.state_dict(0)
        missing = sorted(set(mine) - set(state))
        if missing:
            raise KeyError(f"InfiniteSampler state is missing keys {missing}")
        for key, value in mine.items():
            if key != "num_consumed" and state[key] != value:
                raise ValueError(
                    f"InfiniteSampler state has {key}={state[key]!r} but this sampler has "
                    f"{key}={value!r}; the stream cannot be resumed exactly"
                )
        if int(state["num_consumed"]) < 0:
            raise ValueError(f"num_consumed must be >= 0, got {state['num_consumed']}")
        self._resume_consumed = int(state["num_consumed"])
        self._num_consumed = self._resume_consumed
