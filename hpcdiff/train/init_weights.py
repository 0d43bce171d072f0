"""``model.init_from``: start a new run from the weights of a ``.mdlus`` file (fine-tuning).

Accepted files: an hpcdiff ``.mdlus`` (``Module.save``; what ``hpcdiff checkpoint consolidate``
and ``hpcdiff sample`` write: the whole trained module, its inference network with
``--submodule model``, or a bare backbone) and a PhysicsNeMo ``.mdlus`` of a ``SongUNet``,
``SongUNetPosEmbd`` or ``DiT`` (read by :func:`hpcdiff.models.load_physicsnemo`). The file's
weights go to the part of the new model of the same class (the whole objective, its
``MultiDiffusionModel2D`` or its backbone), matched by parameter name and shape.

``model.init_strict: true`` (default) requires every weight of that part to be present with
the same shape and nothing else in the file; ``false`` loads what matches and reports the rest.
The weights are loaded before the engine is built, so every ZeRO stage and rank count works;
a resumed run takes its weights from the checkpoint instead.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hpcdiff.config import ConfigError

_SHOW = 6  # names listed per kind of mismatch


@dataclass
class InitReport:
    """What ``model.init_from`` loaded into which part of the model."""

    path: str
    kind: str  # 'hpcdiff' or 'physicsnemo'
    source_class: str
    target: str  # dotted name of the part that received the weights ('' = the whole objective)
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the model, not in the file
    unexpected: list[str] = field(default_factory=list)  # in the file, not in the model
    mismatched: list[str] = field(default_factory=list)  # in both, different shapes

    @property
    def complete(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def problems(self) -> str:
        parts = []
        for name in ("missing", "unexpected", "mismatched"):
            keys = getattr(self, name)
            if keys:
                more = f" (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
                parts.append(f"{len(keys)} {name} {keys[:_SHOW]}{more}")
        return "; ".join(parts)

    def summary(self) -> str:
        target = self.target or "the whole model"
        text = (
            f"model.init_from: {self.path} ({self.kind} {self.source_class}) -> {target}: "
            f"loaded {len(self.loaded)} tensors"
        )
        return text if self.complete else f"{text}; not loaded: {self.problems()}"


def _file_kind(path: Path) -> str:
    """'hpcdiff' or 'physicsnemo' from the archive's args.json (legacy tars: PhysicsNeMo)."""
    if not zipfile.is_zipfile(path):
        return "physicsnemo"
    with zipfile.ZipFile(path) as zf:
        try:
            spec = json.loads(zf.read("args.json"))
        except (KeyError, ValueError):
            return "physicsnemo"  # let the importer name what is wrong
    return "hpcdiff" if isinstance(spec, dict) and "class" in spec else "physicsnemo"


def read_source(path: str | Path) -> tuple[str, torch.nn.Module, dict[str, torch.Tensor]]:
    """(kind, module, the file's state dict) of a ``.mdlus`` file; ConfigError naming the key
    and the file when it cannot be read."""
    from hpcdiff.core import Module
    from hpcdiff.models.physicsnemo_import import read_physicsnemo

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config key 'model.init_from': {path}: no such file")
    kind = _file_kind(path)
    try:
        if kind == "hpcdiff":
            import hpcdiff.experiment.build  # noqa: F401  (registers DiffusionObjective)

            module = Module.from_checkpoint(path)  # complete by construction (Module.save)
            return kind, module, module.state_dict()
        return kind, *read_physicsnemo(path)
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as err:
        raise ConfigError(f"config key 'model.init_from': {err}") from None


def _tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters and persistent buffers of ``model`` by state-dict name (the objects
    themselves, which carry ZeRO-3's ``ds_shape`` when partitioned)."""
    every = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    return {k: every[k] for k in model.state_dict() if k in every}


def _target_prefix(model: torch.nn.Module, source: torch.nn.Module, names: set[str]) -> str:
    """Dotted name of the submodule of ``model`` that ``source`` corresponds to: the first of
    the same class, else the one sharing the most tensor names."""
    keys = set(source.state_dict())
    best, best_overlap = "", -1
    for name, sub in model.named_modules():
        if type(sub) is type(source):
            return name
        prefix = f"{name}." if name else ""
        overlap = sum(1 for k in keys if prefix + k in names)
        if overlap > best_overlap:
            best, best_overlap = name, overlap
    return best


def match_weights(
    model: torch.nn.Module, source: torch.nn.Module, state: dict, path: str, kind: str
) -> tuple[InitReport, dict[str, torch.Tensor]]:
    """The report and the {name in ``model``: tensor} that ``state`` (of ``source``'s class)
    provides."""
    state = {k: v.detach() for k, v in state.items()}
    tensors = _tensors(model)
    prefix_name = _target_prefix(model, source, set(tensors))
    prefix = f"{prefix_name}." if prefix_name else ""
    target = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    report = InitReport(path, kind, type(source).__name__, prefix_name)
    values = {}
    for name, value in state.items():
        if name not in target:
            report.unexpected.append(name)
        elif _shape(target[name]) != tuple(value.shape):
            report.mismatched.append(f"{name} {list(value.shape)} vs {list(_shape(target[name]))}")
        else:
            report.loaded.append(name)
            values[prefix + name] = value
    missing = set(target) - set(state)
    if kind == "physicsnemo":  # fixed sinusoidal tables that older releases did not save
        missing = {k for k in missing if not k.endswith(".freqs")}
    report.missing = sorted(missing)
    return report, values


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(getattr(t, "ds_shape", t.shape))  # the whole shape when ZeRO-3 partitioned it


def init_from(model: torch.nn.Module, path: str, strict: bool = True) -> InitReport:
    """Load ``path`` into ``model`` (see the module docstring); ConfigError when ``strict``
    and anything does not match, or when nothing matches at all."""
    kind, source, state = read_source(path)
    report, values = match_weights(model, source, state, str(path), kind)
    if not values or (strict and not report.complete):
        hint = "" if not values else "; set model.init_strict=false to load what matches"
        raise ConfigError(
            f"config key 'model.init_from': {path} ({kind} {type(source).__name__}) does not "
            f"fit the model of this config: {report.problems() or 'no tensor matches'}{hint}"
        )
    _assign(model, values)
    return report


@torch.no_grad()
def _assign(model: torch.nn.Module, values: dict[str, torch.Tensor]) -> None:
    """Copy whole tensors into ``model``; parameters that ZeRO-3 partitioned at construction
    (``zero.init_on_construct``) are gathered, set on rank 0 and scattered back."""
    from hpcdiff.distributed import gathered_parameters

    tensors = _tensors(model)
    params = [p for k, p in model.named_parameters() if k in values]
    with gathered_parameters(params, modifier_rank=0):
        for name, value in values.items():
            tensors[name].copy_(value.to(tensors[name].dtype))
