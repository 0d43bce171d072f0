"""Turn a sharded training checkpoint (any ZeRO stage, any rank count) into one float32 state
dict for inference.

Runs in a single process, without a process group and without DeepSpeed: every parameter is
joined from the per-rank fragments of the float32 master weights (or of the EMA), buffers and
frozen parameters come from ``module.pt``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from hpcdiff.distributed.checkpoint import load_torch, read_manifest, verify_checkpoint
from hpcdiff.distributed.restore import SavedState


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
) -> Path:
    """Write the checkpoint's weights to one file for inference.

    ``weights`` is ``ema``, ``model`` or ``auto`` (EMA when the checkpoint has one);
    ``submodule`` (a dotted name, e.g. ``model``) exports only that part of the trained module,
    such as the network inside a training objective. An ``output`` ending in ``.mdlus`` is an
    :class:`hpcdiff.core.Module` file loadable with ``Module.from_checkpoint`` (the trained
    module must be a ``Module``); any other name gets ``torch.save`` of the float32 state dict.
    """
    path, output = Path(path), Path(output)
    problems = verify_checkpoint(path)
    if problems:
        raise ValueError(f"{path} is corrupt or incomplete: {'; '.join(problems)}")
    manifest = read_manifest(path)
    if weights == "auto":
        weights = "ema" if manifest["has_ema"] else "model"
    if weights not in ("ema", "model"):
        raise ValueError(f"weights={weights!r} must be one of auto, ema, model")
    state = ema_state_dict(path) if weights == "ema" else model_state_dict(path)
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix == ".mdlus":
        return _save_module(manifest, state, path, output, submodule)
    if submodule:
        prefix = f"{submodule}."
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise ValueError(f"{path}: the trained module has no submodule {submodule!r}")
    tmp = output.with_name(f".{output.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, output)
    return output


def _save_module(
    manifest: dict, state: dict, path: Path, output: Path, submodule: str | None
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
    return model.save(output)
