"""Turn a sharded training checkpoint (any ZeRO stage, any rank count) into one float32 state
dict for inference.

:func:`consolidate_checkpoint` runs in a single process, without a process group and without
DeepSpeed: every parameter is joined from the per-rank fragments of the float32 master weights
(or of the EMA), buffers and frozen parameters come from ``module.pt``. A ``.mdlus`` it writes
records its source (checkpoint, manifest checksum, weights), so :func:`consolidate_once` (the
collective that sampling on N ranks calls) can reuse a current file instead of merging again.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import torch
import torch.distributed as dist

from hpcdiff.distributed.checkpoint import load_torch, read_manifest, verify_checkpoint
from hpcdiff.distributed.restore import SavedState

log = logging.getLogger(__name__)


def _joined(path: Path, key: str) -> dict[str, torch.Tensor]:
    manifest = read_manifest(path)
    saved = SavedState(path, manifest)
    out = {}
    for name, shape in manifest["params"].items():
        numel = torch.Size(shape).numel()
        out[name] = saved.read(name, key, 0, numel).clone().view(shape)
    return out


def _fixed(path: Path) -> dict[str, torch.Tensor]:
    """Buffers and frozen parameters (``module.pt``), floating ones as float32."""
    return {k: v.float() if v.is_floating_point() else v
            for k, v in load_torch(path / "module.pt").items()}  # fmt: skip


def model_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Whole float32 weights and buffers of the trained model in checkpoint ``path``."""
    path = Path(path)
    return {**_fixed(path), **_joined(path, "fp32")}


def ema_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Whole float32 EMA weights of checkpoint ``path`` (buffers and frozen parameters taken
    from the model)."""
    path = Path(path)
    if not read_manifest(path)["has_ema"]:
        raise FileNotFoundError(f"{path}: checkpoint holds no EMA")
    return {**_fixed(path), **_joined(path, "ema")}  # every trained parameter has an EMA


def consolidate_checkpoint(
    path: str | os.PathLike,
    output: str | os.PathLike,
    weights: str = "auto",
    submodule: str | None = None,
    verified: bool = False,
) -> Path:
    """Write the checkpoint's weights to one file for inference.

    ``weights`` is ``ema``, ``model`` or ``auto`` (EMA when the checkpoint has one);
    ``submodule`` (a dotted name, e.g. ``model``) exports only that part of the trained module,
    such as the network inside a training objective. An ``output`` ending in ``.mdlus`` is an
    :class:`hpcdiff.core.Module` file loadable with ``Module.from_checkpoint`` (the trained
    module must be a ``Module``); any other name gets ``torch.save`` of the float32 state dict.
    ``verified``: the caller has just verified the checkpoint's checksums (skip that here; under
    a process group verification is collective, so a single rank must pass it).
    """
    path, output = Path(path), Path(output)
    if not verified:
        problems = verify_checkpoint(path)
        if problems:
            raise ValueError(f"{path} is corrupt or incomplete: {'; '.join(problems)}")
    manifest = read_manifest(path)
    weights = _resolve_weights(manifest, weights)
    state = ema_state_dict(path) if weights == "ema" else model_state_dict(path)
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix == ".mdlus":
        source = {**source_of(path, weights), "submodule": submodule}
        return _save_module(manifest, state, path, output, submodule, source)
    if submodule:
        prefix = f"{submodule}."
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise ValueError(f"{path}: the trained module has no submodule {submodule!r}")
    tmp = output.with_name(f".{output.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, output)
    return output


def _resolve_weights(manifest: dict, weights: str) -> str:
    if weights == "auto":
        return "ema" if manifest["has_ema"] else "model"
    if weights not in ("ema", "model"):
        raise ValueError(f"weights={weights!r} must be one of auto, ema, model")
    return weights


def source_of(path: str | os.PathLike, weights: str = "auto") -> dict:
    """What a ``.mdlus`` consolidated from checkpoint ``path`` records as its source: the
    checkpoint directory, step, sha256 of its manifest (which holds the checksum of every
    file, so it names the content) and the weights (``ema`` or ``model``)."""
    path = Path(path).resolve()
    raw = (path / "manifest.json").read_bytes()
    manifest = read_manifest(path)
    return {
        "checkpoint": str(path),
        "step": manifest["step"],
        "manifest_sha256": hashlib.sha256(raw).hexdigest(),
        "weights": _resolve_weights(manifest, weights),
    }


def is_current(output: str | os.PathLike, path: str | os.PathLike, weights: str = "auto") -> bool:
    """Whether ``output`` (a ``.mdlus``) holds the whole module consolidated from checkpoint
    ``path`` with these ``weights``, according to the source it recorded."""
    from hpcdiff.core.module import read_metadata

    recorded = read_metadata(output).get("consolidated_from")
    if not isinstance(recorded, dict) or recorded.get("submodule") is not None:
        return False
    want = source_of(path, weights)
    return all(recorded.get(k) == want[k] for k in ("step", "manifest_sha256", "weights"))


def consolidate_once(
    path: str | os.PathLike, output: str | os.PathLike, weights: str = "auto"
) -> Path:
    """Collective: make ``output`` (a ``.mdlus`` on a file system every rank sees) the whole
    module of checkpoint ``path``, merged by rank 0 only, or not at all when ``output``
    already records that source (:func:`is_current`). The caller has verified ``path``
    (e.g. with the collective ``find_latest``). A failure on rank 0 is raised on every rank.
    Returns ``output``; every rank then loads that one file instead of merging N times."""
    path, output = Path(path), Path(output)
    rank = dist.get_rank() if dist.is_initialized() else 0
    status = [None]
    if rank == 0:
        try:
            if is_current(output, path, weights):
                log.info("reusing %s: consolidated from %s already", output, path)
            else:
                consolidate_checkpoint(path, output, weights, verified=True)
                log.info("consolidated %s into %s (once, on rank 0)", path, output)
        except Exception as err:  # every rank must leave the broadcast below, then raise
            status = [f"{type(err).__name__}: {err}"]
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(status, src=0)  # also the barrier before others read
    if status[0] is not None:
        raise RuntimeError(f"rank 0 could not consolidate {path} into {output}: {status[0]}")
    return output


def _save_module(
    manifest: dict, state: dict, path: Path, output: Path, submodule: str | None, source: dict
) -> Path:
    from hpcdiff.core import Module

    spec = manifest.get("model_spec")
    if spec is None:
        raise ValueError(
            f"{path}: the trained model is not an hpcdiff.core.Module, so no .mdlus can be "
            "written; choose an output name ending in .pt"
        )
    model = Module.from_spec(spec, source=path)
    model.load_state_dict(state, strict=True)
    if submodule:
        try:
            model = model.get_submodule(submodule)
        except AttributeError:
            name = type(model).__name__
            raise ValueError(f"{path}: {name} has no submodule {submodule!r}") from None
        if not isinstance(model, Module):
            raise ValueError(f"{path}: submodule {submodule!r} is not an hpcdiff.core.Module")
    return model.save(output, metadata={"consolidated_from": source})
