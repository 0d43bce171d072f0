"""Import PhysicsNeMo ``.mdlus`` checkpoints (SongUNet, SongUNetPosEmbd, DiT) without their code.

A checkpoint is a zip (current) or tar (legacy) archive of ``args.json`` (``__name__``,
``__module__``, ``__args__``), ``metadata.json`` and ``model.pt`` (a state dict). Members are
read into memory, never extracted; the state dict is read with ``torch.load(weights_only=True)``
and classes are looked up in a fixed table, so nothing from the file is executed.
"""

from __future__ import annotations

import inspect
import io
import json
import os
import posixpath
import tarfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from hpcdiff.core import Module
from hpcdiff.models.layers import PositionalEmbedding

_MEMBERS = ("args.json", "metadata.json", "model.pt")
_NESTED_PREFIX = "__physicsnemo.Module__"
# DiT constructor arguments that take only these values here (PhysicsNeMo's defaults).
_DIT_FIXED = {
    "tokenizer": "patch_embed_2d",
    "detokenizer": "proj_reshape_2d",
    "attention_backend": "timm",
    "conditioning_embedder": "dit",
    "use_nan_mask_tokens": False,
}
_DIT_IGNORED = ("layernorm_backend", "dit_initialization", "force_tokenization_fp32")
_DIT_EMPTY = (
    "conditioning_embedder_kwargs",
    "timestep_embed_kwargs",
    "detokenizer_kwargs",
    "block_kwargs",
    "attn_kwargs",
)


def _classes() -> dict[str, type[Module]]:
    from hpcdiff.models.dit import DiT
    from hpcdiff.models.song_unet import SongUNet
    from hpcdiff.models.song_unet_pos import SongUNetPosEmbd

    return {"SongUNet": SongUNet, "SongUNetPosEmbd": SongUNetPosEmbd, "DiT": DiT}


def _safe_name(path: Path, name: str) -> str:
    norm = posixpath.normpath(name)
    if name.startswith(("/", "\\")) or norm.startswith("..") or "\\" in name:
        raise ValueError(f"{path}: refusing unsafe archive member name {name!r}")
    return norm


def _read_members(path: Path) -> dict[str, bytes]:
    """The three checkpoint members, read in memory (tar is tested first, as PhysicsNeMo does)."""
    found: dict[str, bytes] = {}
    if tarfile.is_tarfile(path):
        with tarfile.open(path, "r:*") as tar:
            for member in tar.getmembers():
                name = _safe_name(path, member.name)
                if name not in _MEMBERS:
                    continue
                if not member.isfile():
                    raise ValueError(f"{path}: archive member {member.name!r} is not a file")
                found[name] = tar.extractfile(member).read()
    elif zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                name = _safe_name(path, info.filename)
                if name in _MEMBERS and not info.is_dir():
                    found[name] = zf.read(info)
    else:
        raise ValueError(f"{path}: not a PhysicsNeMo checkpoint (neither zip nor tar)")
    missing = [m for m in ("args.json", "model.pt") if m not in found]
    if missing:
        raise ValueError(f"{path}: checkpoint lacks {missing}")
    return found


def _dit_args(path: Path, args: dict[str, Any]) -> dict[str, Any]:
    """PhysicsNeMo DiT arguments -> hpcdiff DiT arguments (refusing unsupported variants)."""
    args = dict(args)
    for key, default in _DIT_FIXED.items():
        value = args.pop(key, default)
        if value != default:
            raise ValueError(f"{path}: DiT {key}={value!r} is not supported")
    for key in _DIT_IGNORED:
        args.pop(key, None)
    for key in _DIT_EMPTY:
        if args.pop(key, None):
            raise ValueError(f"{path}: DiT with non-default {key} is not supported")
    rates = args.pop("drop_path_rates", None)
    if rates and any(rates):
        raise ValueError(f"{path}: DiT with drop_path_rates={rates} is not supported")
    tok = args.pop("tokenizer_kwargs", None) or {}
    args["pos_embed"] = tok.pop("pos_embed", "learnable")
    if args["pos_embed"] not in ("learnable", "none") or tok:
        raise ValueError(f"{path}: DiT tokenizer_kwargs {tok} / pos_embed not supported")
    return args


def _songunet_args(path: Path, name: str, args: dict[str, Any]) -> dict[str, Any]:
    args = dict(args)
    if name == "SongUNetPosEmbd":
        if args.pop("lead_time_mode", False) or args.pop("lead_time_channels", None):
            raise ValueError(f"{path}: SongUNetPosEmbd with lead-time embeddings is not supported")
        args.pop("lead_time_steps", None)
        if args.pop("prob_channels", None):
            raise ValueError(f"{path}: SongUNetPosEmbd with prob_channels is not supported")
    return args


def _migrate_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename keys of older PhysicsNeMo releases to the current layout."""
    out = {}
    legacy_attn = {"norm2.": "attn.norm.", "qkv.": "attn.qkv.", "proj.": "attn.proj."}
    for key, value in state.items():
        if key.endswith("device_buffer"):
            continue
        if key.startswith(("enc.", "dec.")):
            head, _, leaf = key.rpartition(".")
            prefix, _, sub = head.rpartition(".")  # e.g. enc.16x16_block0 / qkv
            if prefix.count(".") == 1 and f"{sub}." in legacy_attn:
                key = f"{prefix}.{legacy_attn[sub + '.']}{leaf}"
        elif key.startswith("t_embedder."):
            key = "conditioning_embedder." + key
        out[key] = value
    return out


def _build(path: Path, spec: dict[str, Any]) -> Module:
    """The hpcdiff model named by a PhysicsNeMo ``args.json`` (weights not loaded)."""
    try:
        name, module, args = spec["__name__"], spec.get("__module__", ""), spec["__args__"]
    except (KeyError, TypeError) as err:
        raise ValueError(f"{path}: args.json is not a PhysicsNeMo model spec ({err})") from None
    classes = _classes()
    if name not in classes or not str(module).startswith(("physicsnemo.", "modulus.")):
        raise ValueError(
            f"{path}: class {name!r} (module {module!r}) cannot be imported; hpcdiff imports "
            f"PhysicsNeMo {sorted(classes)}"
        )
    if any(k.startswith(_NESTED_PREFIX) for k in spec):
        raise ValueError(f"{path}: checkpoints with nested modules are not supported")
    cls = classes[name]
    args = _dit_args(path, args) if name == "DiT" else _songunet_args(path, name, args)
    known = set(list(inspect.signature(cls.__init__).parameters)[1:])
    if set(args) - known:
        raise ValueError(f"{path}: {name} arguments {sorted(set(args) - known)} are not supported")
    with warnings.catch_warnings():  # legacy grid types are the point of importing old files
        warnings.simplefilter("ignore", FutureWarning)
        return cls(**args)


def _read_state(path: Path, blob: bytes, map_location) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(io.BytesIO(blob), map_location=map_location, weights_only=True)
    except Exception as err:  # torch reports disallowed globals and corrupt data variously
        raise ValueError(f"{path}: model.pt is not a plain tensor state dict: {err}") from err
    if not isinstance(state, dict):
        raise ValueError(f"{path}: model.pt holds a {type(state).__name__}, not a state dict")
    return _migrate_state(state)


def _load_weights(path: Path, model: Module, blob: bytes, map_location, strict: bool) -> None:
    result = model.load_state_dict(_read_state(path, blob, map_location), strict=False)
    # Sinusoidal frequency tables are fixed by the arguments; old releases did not save them.
    missing = [
        k
        for k in result.missing_keys
        if not (
            k.endswith(".freqs") and isinstance(model.get_submodule(k[:-6]), PositionalEmbedding)
        )
    ]
    if strict and (missing or result.unexpected_keys):
        raise ValueError(
            f"{path}: weights do not match {type(model).__name__}: missing {missing[:8]}, "
            f"unexpected {result.unexpected_keys[:8]}"
        )


def load_physicsnemo(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", strict: bool = True
) -> Module:
    """Build the hpcdiff equivalent of a PhysicsNeMo ``.mdlus`` checkpoint and load its weights.

    Supports ``SongUNet``, ``SongUNetPosEmbd`` (without lead time) and ``DiT`` (default
    tokenizer, detokenizer, attention and conditioning embedder). Raises ``FileNotFoundError``
    for a missing file and ``ValueError`` naming the file for anything else it cannot import.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    members = _read_members(path)
    try:
        spec = json.loads(members["args.json"])
    except ValueError as err:
        raise ValueError(f"{path}: args.json is not valid JSON ({err})") from None
    model = _build(path, spec)
    _load_weights(path, model, members["model.pt"], map_location, strict)
    return model.to(map_location)


def read_physicsnemo(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[Module, dict[str, torch.Tensor]]:
    """The hpcdiff model a PhysicsNeMo ``.mdlus`` describes (freshly initialised, weights not
    loaded) and the file's state dict with its names in hpcdiff's layout: what a caller that
    loads part of the weights (``model.init_from``) needs. Errors as :func:`load_physicsnemo`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    members = _read_members(path)
    try:
        spec = json.loads(members["args.json"])
    except ValueError as err:
        raise ValueError(f"{path}: args.json is not valid JSON ({err})") from None
    return _build(path, spec), _read_state(path, members["model.pt"], map_location)
