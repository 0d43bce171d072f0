"""Sharded, atomic, verified training checkpoints of a DeepSpeed engine plus EMA and extra state.

Layout of one checkpoint (``<dir>/step_000001200/``)::

    manifest.json        step, world size, ZeRO stage, model spec, sha256 + size of every file
    ds/                  DeepSpeed's own files (module, optimizer and LR-scheduler state)
    ema/rank_00000.pt    this rank's EMA shard (see hpcdiff.distributed.ema)
    extra/rank_00000.pt  this rank's opaque trainer state (sampler position, RNG states, ...)

Every rank writes into ``.tmp_step_000001200``; after all files are fsynced and hashed, rank 0
writes the manifest and renames the directory, so a checkpoint either exists complete or not at
all. Loading verifies sizes and checksums (shared across ranks) and falls back, with a warning,
to the newest checkpoint that verifies. All ranks must see the same (shared) file system.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from hpcdiff.distributed.ema import ShardedEMA

FORMAT = "hpcdiff.checkpoint/1"
_STEP_DIR = re.compile(r"^step_(\d+)$")
_CHUNK = 8 << 20


def _rank_world() -> tuple[int, int]:
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _gather(obj: Any) -> list[Any]:
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _from_rank0(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (ranks may see different directory listings on a
    networked file system; every rank must then walk the same checkpoints)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _save_synced(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())


def _hash_and_sync(path: Path) -> dict[str, Any]:
    """sha256 and size of a file, which is fsynced on the way (DeepSpeed does not fsync)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
        os.fsync(fh.fileno())
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def step_dir(ckpt_dir: str | os.PathLike, step: int) -> Path:
    """Directory name of the checkpoint taken after ``step`` optimizer steps."""
    return Path(ckpt_dir) / f"step_{step:09d}"


def _model_spec(module: torch.nn.Module) -> dict | None:
    from hpcdiff.core import Module

    return module._spec() if isinstance(module, Module) else None


def save_checkpoint(
    engine: Any,
    ckpt_dir: str | os.PathLike,
    step: int,
    ema: ShardedEMA | None = None,
    extra: dict | None = None,
    keep_last: int | None = None,
) -> Path:
    """Write a complete checkpoint atomically (collective: every rank calls it) and keep only
    the ``keep_last`` newest. ``extra`` is this rank's own state (tensors, numbers, strings and
    containers of them), returned by :func:`load_checkpoint` on the same rank."""
    rank, world = _rank_world()
    ckpt_dir = Path(ckpt_dir)
    final = step_dir(ckpt_dir, step)
    tmp = ckpt_dir / f".tmp_{final.name}"
    if rank == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        for stale in ckpt_dir.glob(".tmp_step_*"):  # left by a crashed save
            shutil.rmtree(stale)
    _barrier()
    engine.save_checkpoint(
        str(tmp), tag="ds", client_state={"hpcdiff_step": step}, save_latest=False
    )
    if ema is not None:
        _save_synced(ema.state_dict(), tmp / "ema" / f"rank_{rank:05d}.pt")
    _save_synced(extra or {}, tmp / "extra" / f"rank_{rank:05d}.pt")
    _barrier()
    names = _files(tmp)
    mine = {name: _hash_and_sync(tmp / name) for name in names[rank::world]}
    files = {k: v for part in _gather(mine) for k, v in part.items()}
    if rank == 0:
        manifest = {
            "format": FORMAT,
            "step": step,
            "world_size": world,
            "zero_stage": int(engine.zero_optimization_stage()),
            "has_ema": ema is not None,
            "model_spec": _model_spec(engine.module),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "files": files,
        }
        _commit(tmp, final, manifest)
        if keep_last is not None:
            _prune(ckpt_dir, keep_last)
    _barrier()
    return final


def _commit(tmp: Path, final: Path, manifest: dict) -> None:
    with open(tmp / "manifest.json", "w") as fh:
        json.dump(manifest, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    for sub in sorted({p.parent for p in tmp.rglob("*")}, key=lambda p: -len(p.parts)):
        _fsync_dir(sub)
    if final.exists():  # re-saving a step (e.g. after resuming from an older checkpoint)
        old = final.with_name(f".old_{final.name}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
    _fsync_dir(final.parent)


def list_checkpoints(ckpt_dir: str | os.PathLike) -> list[Path]:
    """Complete (renamed) checkpoint directories, newest first; nothing is verified."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def _prune(ckpt_dir: Path, keep_last: int) -> None:
    for old in list_checkpoints(ckpt_dir)[keep_last:]:
        shutil.rmtree(old, ignore_errors=True)


def read_manifest(path: str | os.PathLike) -> dict:
    """The manifest of checkpoint ``path`` (ValueError when missing or unreadable)."""
    file = Path(path) / "manifest.json"
    try:
        manifest = json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{file}: no readable manifest ({err})") from None
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{file}: not an hpcdiff checkpoint (format {manifest.get('format')!r})")
    return manifest


def _check_files(root: Path, files: dict[str, dict], names: list[str]) -> list[str]:
    problems = []
    for name in names:
        want, file = files[name], root / name
        if not file.is_file():
            problems.append(f"{name} is missing")
        elif file.stat().st_size != want["bytes"]:
            problems.append(f"{name} has {file.stat().st_size} bytes, expected {want['bytes']}")
        elif _hash_and_sync(file)["sha256"] != want["sha256"]:
            problems.append(f"{name} fails its sha256 checksum")
    return problems


def verify_checkpoint(path: str | os.PathLike) -> list[str]:
    """Problems found in checkpoint ``path`` (empty when every file matches its manifest);
    under a process group the files are checked in parallel, one share per rank."""
    rank, world = _rank_world()
    try:
        files, mine = read_manifest(path)["files"], None
    except ValueError as err:  # still join the gather: no rank may skip the collective
        files, mine = {}, [str(err)]
    if mine is None:
        mine = _check_files(Path(path), files, sorted(files)[rank::world])
    return sorted({p for part in _gather(mine) for p in part})


def find_latest(ckpt_dir: str | os.PathLike) -> Path | None:
    """Newest checkpoint that verifies; corrupt newer ones are skipped with a warning."""
    for path in _from_rank0(list_checkpoints(ckpt_dir)):
        problems = verify_checkpoint(path)
        if not problems:
            return path
        if _rank_world()[0] == 0:
            warnings.warn(
                f"checkpoint {path} is corrupt or incomplete ({'; '.join(problems[:3])}); "
                "trying the previous one",
                RuntimeWarning,
                stacklevel=2,
            )
    return None


def load_checkpoint(engine: Any, path: str | os.PathLike, ema: ShardedEMA | None = None) -> tuple:
    """Restore model, optimizer, LR schedule and EMA from ``path`` (collective); returns
    ``(step, extra)`` with this rank's ``extra`` as saved."""
    rank, world = _rank_world()
    path = Path(path)
    manifest = read_manifest(path)
    if manifest["world_size"] != world:
        raise ValueError(
            f"{path} was written by {manifest['world_size']} ranks, this job has {world}: resume "
            "with the same number of ranks (or consolidate it and start from the weights)"
        )
    stage = int(engine.zero_optimization_stage())
    if manifest["zero_stage"] != stage:
        raise ValueError(
            f"{path} was written at ZeRO stage {manifest['zero_stage']}, "
            f"this engine runs stage {stage}"
        )
    loaded, _ = engine.load_checkpoint(
        str(path), tag="ds", load_optimizer_states=True, load_lr_scheduler_states=True
    )
    if loaded is None:
        raise RuntimeError(f"DeepSpeed could not load {path / 'ds'}")
    if ema is not None:
        if not manifest["has_ema"]:
            raise ValueError(f"{path} holds no EMA but an EMA was passed to restore")
        ema.load_state_dict(load_torch(path / "ema" / f"rank_{rank:05d}.pt"))
    return manifest["step"], load_torch(path / "extra" / f"rank_{rank:05d}.pt")


def resume(
    engine: Any,
    ckpt_dir: str | os.PathLike,
    resume_from: str = "latest",
    ema: ShardedEMA | None = None,
) -> tuple[int, dict] | None:
    """Apply a ``checkpoint.resume`` setting: ``latest`` (newest verified checkpoint in
    ``ckpt_dir``, if any), ``none``, or a checkpoint path. Returns ``(step, extra)`` or None."""
    if resume_from == "none":
        return None
    if resume_from == "latest":
        path = find_latest(ckpt_dir)
        return None if path is None else load_checkpoint(engine, path, ema)
    problems = verify_checkpoint(resume_from)
    if problems:
        raise ValueError(f"checkpoint.resume={resume_from!r} is unusable: {'; '.join(problems)}")
    return load_checkpoint(engine, resume_from, ema)


def load_torch(path: Path) -> Any:
    """``torch.load`` of one of our own checkpoint files (tensors and plain containers only)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def capture_rng_state() -> dict:
    """Python, NumPy and torch (CPU and CUDA) RNG states in a form ``extra`` can hold."""
    # The legacy global NumPy RNG is what third-party code draws from, so it is what to save.
    _, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002
    version, py_state, py_gauss = random.getstate()
    state = {
        "python": [version, list(py_state), py_gauss],
        "numpy": [torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():  # this rank's device only: others may differ on resume
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict) -> None:
    """Inverse of :func:`capture_rng_state`."""
    version, py_state, py_gauss = state["python"]
    random.setstate((version, tuple(py_state), py_gauss))
    keys, pos, has_gauss, gauss = state["numpy"]
    mt = ("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, gauss)
    np.random.set_state(mt)  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
