"""Where each rank keeps its part of every trained parameter, under any ZeRO stage.

A *fragment* is a contiguous range ``[start, start + numel)`` of a flattened parameter. Each
rank saves (and its EMA holds) one fragment per parameter, and the fragments of all ranks tile
every parameter exactly once:

* ZeRO-3: the rank's partition (``param.ds_tensor``, its padding cut off);
* ZeRO-1/2 (and DeepSpeed's bf16 optimizer): the range of the flat fp32 partition the rank's
  optimizer updates (DeepSpeed's ``_hp_mapping``; empty where the rank owns none of it);
* ZeRO-0: an even split of the whole parameter (every rank holds everything, saves 1/N).

:class:`EngineShards` reads and writes the float32 master weights and the Adam moments of those
fragments through DeepSpeed's partition bookkeeping, so a checkpoint is a list of fragments
per rank that any other rank count and stage can read back (see ``checkpoint.py``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.distributed as dist

MOMENTS = ("exp_avg", "exp_avg_sq")  # Adam's first and second moments


class Fragment(NamedTuple):
    start: int
    numel: int


def _rank_world() -> tuple[int, int]:
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def full_numel(param: torch.nn.Parameter) -> int:
    """Element count of the whole parameter (also when ZeRO-3 partitioned it)."""
    return int(getattr(param, "ds_numel", param.numel()))


def full_shape(param: torch.nn.Parameter) -> list[int]:
    return list(param.ds_shape) if hasattr(param, "ds_shape") else list(param.shape)


def even_split(numel: int, rank: int, world: int) -> Fragment:
    """Rank ``rank``'s share of ``numel`` elements cut into ``world`` near-equal ranges."""
    size = -(-numel // world)
    start = min(rank * size, numel)
    return Fragment(start, min(size, numel - start))


def owned_fragment(param: torch.nn.Parameter) -> Fragment:
    """The fragment of ``param`` this rank saves and averages (see the module docstring)."""
    if hasattr(param, "ds_tensor"):  # ZeRO-3 partition
        group = getattr(param, "ds_process_group", None)
        part = param.ds_tensor.numel()
        start = dist.get_rank(group=group) * part if dist.is_initialized() else 0
        start = min(start, full_numel(param))
        return Fragment(start, min(part, full_numel(param) - start))
    if hasattr(param, "_hp_mapping"):  # ZeRO-1/2: the range of this rank's flat partition
        mapping = param._hp_mapping
        if mapping is None:
            return Fragment(0, 0)
        address = mapping.lp_fragment_address
        return Fragment(int(address.start), int(address.numel))
    rank, world = _rank_world()
    return even_split(param.numel(), rank, world)


def local_view(param: torch.nn.Parameter, frag: Fragment) -> torch.Tensor:
    """The module weights of ``frag`` as held on this rank (a view, in the module's dtype)."""
    if hasattr(param, "ds_tensor"):
        return param.ds_tensor.data.view(-1)[: frag.numel]
    return param.data.view(-1)[frag.start : frag.start + frag.numel]


def base_optimizer(engine: Any) -> torch.optim.Optimizer:
    """The torch optimizer doing the updates (inside DeepSpeed's ZeRO / fp16 wrappers)."""
    opt = engine.optimizer
    while not isinstance(opt, torch.optim.Optimizer) and hasattr(opt, "optimizer"):
        opt = opt.optimizer
    if not isinstance(opt, torch.optim.Optimizer):
        raise TypeError(f"no torch optimizer inside {type(engine.optimizer).__name__}")
    return opt


class EngineShards:
    """Read and write this rank's fragments of the weights and Adam state of ``engine``."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        named = [(n, p) for n, p in engine.module.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.fragments = [owned_fragment(p) for p in self.params]
        self.base = base_optimizer(engine)
        self._masters = self._plain_masters()

    def _plain_masters(self) -> dict[int, torch.Tensor]:
        """ZeRO-0: each parameter's float32 master (the fp16/bf16 wrapper's copy, or itself)."""
        opt = self.engine.optimizer
        low = getattr(opt, "fp16_groups", None) or getattr(opt, "bf16_groups", None)
        high = getattr(opt, "fp32_groups", None)
        masters = {}
        if low is not None and high is not None:
            for lows, highs in zip(low, high):
                masters.update({id(lp): hp for lp, hp in zip(lows, highs)})
        return masters

    def _kind(self, p: torch.nn.Parameter) -> str:
        if hasattr(p, "ds_tensor"):
            return "zero3"
        return "zero12" if hasattr(p, "_hp_mapping") else "zero0"

    def _flat_state(self, p: torch.nn.Parameter, key: str | None) -> torch.Tensor:
        """ZeRO-1/2: this rank's fragment of ``p`` inside the flat fp32 partition or its state."""
        mapping = p._hp_mapping  # type: ignore[attr-defined]  # set by DeepSpeed's ZeRO-1/2
        flat = self.base.param_groups[mapping.param_group_index]["params"][0]
        tensor = flat if key is None else self.base.state[flat][key]
        addr = mapping.hp_fragment_address
        return tensor.narrow(0, addr.start, addr.numel)

    def _zero0_state(self, p: torch.nn.Parameter, key: str | None) -> torch.Tensor:
        master = self._masters.get(id(p), p)
        if key is None:
            return master.data.view(-1)
        state = self.base.state.get(master, {})
        if key not in state:  # never updated (no gradient yet): Adam's moments are zero
            return torch.zeros(master.numel())
        return state[key].view(-1)

    def read(self, i: int, key: str | None = None) -> torch.Tensor:
        """Float32 master weights (``key`` None) or Adam state ``key`` of fragment ``i``."""
        p, frag = self.params[i], self.fragments[i]
        kind = self._kind(p)
        if frag.numel == 0:
            return torch.zeros(0)
        if kind == "zero3":
            return p._z3_optimizer.get_local_fp32_param(p, key)[: frag.numel]
        if kind == "zero12":
            return self._flat_state(p, key)
        return self._zero0_state(p, key)[frag.start : frag.start + frag.numel]

    def write(self, i: int, value_of: Any, key: str | None = None) -> None:
        """Set what this rank holds of parameter ``i``: ``value_of(start, numel)`` returns any
        range of the saved float32 tensor. ZeRO-0 holds the whole tensor, the others the
        fragment (ZeRO-3's padding is zero-filled)."""
        p, frag = self.params[i], self.fragments[i]
        kind = self._kind(p)
        with torch.no_grad():
            if kind == "zero3":
                padded = torch.zeros(p.ds_tensor.numel())
                padded[: frag.numel] = value_of(frag.start, frag.numel)
                p._z3_optimizer.set_local_hp_param(padded, p, key)
            elif kind == "zero12":
                if frag.numel:
                    self._flat_state(p, key).copy_(value_of(frag.start, frag.numel))
            else:
                self._zero0_state(p, key).copy_(value_of(0, p.numel()))

    def write_module_weights(self, i: int, value_of: Any) -> None:
        """Set the module's (possibly low-precision) weights of parameter ``i`` as well."""
        p, frag = self.params[i], self.fragments[i]
        with torch.no_grad():
            if hasattr(p, "ds_tensor") and frag.numel:
                p.ds_tensor.data.view(-1)[: frag.numel].copy_(value_of(frag.start, frag.numel))
            if p.numel():  # whole tensor held: ZeRO 0-2, or a ZeRO-3 persistent parameter
                p.data.copy_(value_of(0, full_numel(p)).view(p.shape))

    def _optimized(self) -> list[torch.Tensor]:
        """The tensors the torch optimizer updates (ZeRO-3 lists them in its groups only
        while it steps)."""
        flats = getattr(self.engine.optimizer, "fp32_partitioned_groups_flat", None)
        if flats is not None:
            return list(flats)
        return [t for group in self.base.param_groups for t in group["params"]]

    def ensure_optimizer_state(self) -> None:
        """Create Adam's state (zeros) where the optimizer has not stepped yet, so it can be
        overwritten from a checkpoint before the first step."""
        for flat in self._optimized():
            state = self.base.state[flat]
            for key in MOMENTS:
                if key not in state:
                    state[key] = torch.zeros_like(flat, memory_format=torch.preserve_format)
        # ZeRO-1/2 and the bf16 optimizer link their per-parameter views of the state at the
        # first step; link them now, so DeepSpeed's safe_get_full_* accessors work at once.
        link = getattr(self.engine.optimizer, "_lazy_init_hp_params_optimizer_state", None)
        if link is not None:
            link()

    def adam_step(self) -> int:
        """Adam's step count (the same for every parameter: all are updated each step)."""
        for state in self.base.state.values():
            if "step" in state:
                return int(state["step"])
        return 0

    def set_adam_step(self, step: int) -> None:
        torch_adam = type(self.base).__module__.startswith("torch.optim")
        for flat in self._optimized():
            # torch keeps a float32 scalar tensor, DeepSpeed's Adams an int
            self.base.state[flat]["step"] = torch.tensor(float(step)) if torch_adam else step


def join_fragments(pieces: list[tuple[int, torch.Tensor]], numel: int, name: str) -> torch.Tensor:
    """One flat tensor of ``numel`` elements from ``(start, values)`` fragments that must tile
    it exactly (ValueError naming ``name`` when one is missing or they overlap)."""
    pieces = sorted((p for p in pieces if p[1].numel()), key=lambda p: p[0])
    covered, out = 0, []
    for start, values in pieces:
        if start != covered:
            break
        out.append(values.reshape(-1))
        covered += values.numel()
    if covered != numel or len(out) != len(pieces):
        starts = [s for s, _ in pieces]
        raise ValueError(
            f"the fragments of {name!r} do not tile its {numel} elements (starts {starts[:8]}, "
            f"{covered} covered): a rank's file is missing or from another checkpoint"
        )
    return torch.cat(out) if out else torch.zeros(0)
