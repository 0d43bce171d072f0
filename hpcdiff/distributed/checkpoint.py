"""Sharded, atomic, verified training checkpoints that resume on any rank count and ZeRO stage.

Layout of one checkpoint (``<dir>/step_000001200/``)::

    manifest.json         step, world size, ZeRO stage, parameter shapes, Adam step count,
                          model spec, sha256 + size of every file
    state/rank_00000.pt   this rank's fragment of every trained parameter (see .shards):
                          float32 master weights, Adam moments, EMA, as flat tensors
    module.pt             buffers and frozen parameters, whole (rank 0)
    extra/rank_00000.pt   this rank's opaque trainer state (sampler position, RNG states, ...)

The fragments of all ranks tile every parameter exactly once, so any later job (another rank
count, another ZeRO stage) reads back exactly the weights, moments and EMA that were saved:
there is no conversion step. Every rank writes into ``.tmp_step_000001200``; after all files
are fsynced and hashed, rank 0 writes the manifest and renames the directory, so a checkpoint
either exists complete or not at all. A write that fails on any rank (disk full, permission
denied) removes the temporary directory and raises :class:`CheckpointWriteError` on every rank;
the previous checkpoint is untouched. Loading verifies sizes and checksums (one share of the
files per rank) and falls back, with a logged warning, to the newest checkpoint that verifies.
All ranks must see the same (shared) file system.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from hpcdiff.distributed.ema import ShardedEMA
from hpcdiff.distributed.shards import MOMENTS, EngineShards, full_shape

FORMAT = "hpcdiff.checkpoint/2"
_STEP_DIR = re.compile(r"^step_(\d+)$")
_CHUNK = 8 << 20
log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used for this run (refused before any work: exit 2)."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written; the temporary files were removed and the previous
    checkpoint is intact."""


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


class _KeepWriteError:
    """File wrapper that keeps the OSError of a failed write: torch.save turns it into a
    RuntimeError that no longer says what happened (e.g. ENOSPC)."""

    def __init__(self, fh: Any) -> None:
        self.fh, self.error = fh, None

    def write(self, data: bytes) -> int:
        try:
            return self.fh.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.fh.flush()


def _save_synced(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        writer = _KeepWriteError(fh)
        try:
            torch.save(obj, writer)
        except RuntimeError:
            if writer.error is not None:
                raise writer.error from None
            raise
        fh.flush()
        os.fsync(fh.fileno())


def _hash_and_sync(path: Path) -> dict[str, Any]:
    """sha256 and size of a file (every byte, in 8 MiB pieces), fsynced on the way."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
        os.fsync(fh.fileno())
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def step_dir(ckpt_dir: str | os.PathLike, step: int) -> Path:
    """Directory name of the checkpoint taken after ``step`` optimizer steps."""
    return Path(ckpt_dir) / f"step_{step:09d}"


def _model_spec(module: torch.nn.Module) -> dict | None:
    from hpcdiff.core import Module

    return module.to_spec() if isinstance(module, Module) else None


def _io_message(err: BaseException) -> str:
    """The OS error behind a failed write (torch.save reports ENOSPC as a RuntimeError)."""
    if isinstance(err, OSError):
        return f"{err.strerror or err} ({type(err).__name__}, errno {err.errno})"
    return str(err).splitlines()[-1][:300]


def _agree(error: str | None, what: str) -> None:
    """Collective: raise CheckpointWriteError on every rank if ``error`` is set on any."""
    failed = [(r, e) for r, e in enumerate(_gather(error)) if e is not None]
    if failed:
        rank, message = failed[0]
        raise CheckpointWriteError(f"{what}: rank {rank}: {message}")


def _rank_state(shards: EngineShards, ema: ShardedEMA | None) -> dict[str, Any]:
    """This rank's fragments as flat float32 tensors (see the module docstring)."""
    indices = range(len(shards.names))
    flat = {
        key or "fp32": [shards.read(i, key).detach().float().cpu() for i in indices]
        for key in (None, *MOMENTS)
    }
    if ema is not None:
        if ema.names != shards.names or ema.fragments != shards.fragments:
            raise ValueError("the EMA was built on another module or layout than the engine")
        flat["ema"] = [s.detach().float().cpu().reshape(-1) for s in ema.shadow]
    return {
        "names": list(shards.names),
        "start": torch.tensor([f.start for f in shards.fragments], dtype=torch.int64),
        "numel": torch.tensor([f.numel for f in shards.fragments], dtype=torch.int64),
        **{k: torch.cat(v) if v else torch.zeros(0) for k, v in flat.items()},
    }


def _fixed_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Buffers and frozen parameters, whole (collective under ZeRO-3, which partitions them)."""
    from hpcdiff.distributed.engine import gathered_parameters

    frozen = [(n, p) for n, p in module.named_parameters() if not p.requires_grad]
    with gathered_parameters([p for _, p in frozen]):
        state = {n: p.detach().cpu().clone() for n, p in frozen}
    for prefix, mod in module.named_modules():
        for name, buf in mod._buffers.items():  # persistent ones: what state_dict() holds
            if buf is not None and name not in mod._non_persistent_buffers_set:
                state[f"{prefix}.{name}" if prefix else name] = buf.detach().cpu().clone()
    return state


def _write_files(tmp: Path, rank: int, state: dict, fixed: dict, extra: dict | None) -> list[str]:
    written = [f"state/rank_{rank:05d}.pt", f"extra/rank_{rank:05d}.pt"]
    _save_synced(state, tmp / written[0])
    _save_synced(extra or {}, tmp / written[1])
    if rank == 0:
        _save_synced(fixed, tmp / "module.pt")
        written.append("module.pt")
    return written


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
    containers of them), returned by :func:`load_checkpoint` on the same rank. Raises
    :class:`CheckpointWriteError` on every rank when any rank could not write."""
    rank, world = _rank_world()
    ckpt_dir = Path(ckpt_dir)
    final = step_dir(ckpt_dir, step)
    tmp = ckpt_dir / f".tmp_{final.name}"
    what = f"checkpoint {final} not written"
    error = None
    if rank == 0:
        try:
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            remove_stale(ckpt_dir)
        except OSError as err:
            error = f"{ckpt_dir}: {_io_message(err)}"
    _agree(error, what)
    shards = EngineShards(engine)
    state = _rank_state(shards, ema)
    fixed = _fixed_state(engine.module)
    try:
        mine = {n: _hash_and_sync(tmp / n) for n in _write_files(tmp, rank, state, fixed, extra)}
        error = None
    except (OSError, RuntimeError) as err:
        mine, error = {}, f"{tmp}: {_io_message(err)}"
    try:
        _agree(error, what)
        files = {k: v for part in _gather(mine) for k, v in part.items()}
        error = None
        if rank == 0:
            try:
                _commit(tmp, final, _manifest(engine, shards, ema, step, world, files))
            except OSError as err:
                error = f"{final}: {_io_message(err)}"
        _agree(error, what)
    except CheckpointWriteError:
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if rank == 0 and keep_last is not None:
        _prune(ckpt_dir, keep_last)
    _barrier()
    return final


def _engine_counters(engine: Any) -> dict[str, Any]:
    counters = {k: int(getattr(engine, k, 0)) for k in ("global_steps", "global_samples",
                                                          "skipped_steps")}  # fmt: skip
    scaler = getattr(engine.optimizer, "loss_scaler", None)
    if scaler is not None:  # fp16 dynamic loss scaling
        counters["loss_scale"] = {
            k: getattr(scaler, k) for k in ("cur_scale", "cur_iter", "last_overflow_iter",
                                            "cur_hysteresis") if hasattr(scaler, k)
        }  # fmt: skip
    return counters


def _manifest(engine, shards: EngineShards, ema, step: int, world: int, files: dict) -> dict:
    return {
        "format": FORMAT,
        "step": step,
        "world_size": world,
        "zero_stage": int(engine.zero_optimization_stage()),
        "has_ema": ema is not None,
        "params": {n: full_shape(p) for n, p in zip(shards.names, shards.params)},
        "adam_step": shards.adam_step(),
        "engine": _engine_counters(engine),
        "model_spec": _model_spec(engine.module),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "files": files,
    }


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


def remove_stale(ckpt_dir: Path) -> None:
    """Remove what interrupted saves left behind (``.tmp_step_*``, ``.old_step_*``)."""
    for stale in [*ckpt_dir.glob(".tmp_step_*"), *ckpt_dir.glob(".old_step_*")]:
        log.info("removing %s, left by an interrupted checkpoint save", stale)
        shutil.rmtree(stale)


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
        found = manifest.get("format")
        hint = " (written by an older hpcdiff)" if found == "hpcdiff.checkpoint/1" else ""
        raise ValueError(f"{file}: not an hpcdiff checkpoint of format {FORMAT} ({found!r}{hint})")
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
    """Newest checkpoint that verifies; corrupt newer ones are skipped (logged as warnings)."""
    for path in _from_rank0(list_checkpoints(ckpt_dir)):
        problems = verify_checkpoint(path)
        if not problems:
            return path
        if _rank_world()[0] == 0:
            log.warning(
                "checkpoint %s is corrupt or incomplete (%s); trying the previous one",
                path, "; ".join(problems[:3]),
            )  # fmt: skip
    return None


def load_checkpoint(engine: Any, path: str | os.PathLike, ema: ShardedEMA | None = None) -> tuple:
    """Restore weights, Adam state, step counts and EMA from ``path`` (collective), resharding
    when it was written by another rank count or ZeRO stage; returns ``(step, extra)``.

    ``extra`` is what this rank saved; at another rank count it is rank ``rank % saved
    world``'s, with ``extra["resharded_from"]`` set to the saved world size."""
    from hpcdiff.distributed.restore import restore_state

    rank, world = _rank_world()
    path = Path(path)
    manifest = read_manifest(path)
    if ema is not None and not manifest["has_ema"]:
        raise CheckpointError(f"{path} holds no EMA but the run has one (ema.enabled)")
    restore_state(engine, path, manifest, ema)
    saved_world = int(manifest["world_size"])
    extra = load_torch(path / "extra" / f"rank_{rank % saved_world:05d}.pt")
    if saved_world != world or manifest["zero_stage"] != int(engine.zero_optimization_stage()):
        if rank == 0:
            log.info(
                "resharded %s: written by %d ranks at ZeRO-%d, loaded on %d at ZeRO-%d",
                path, saved_world, manifest["zero_stage"], world,
                engine.zero_optimization_stage(),
            )  # fmt: skip
        if saved_world != world:
            extra = {**extra, "resharded_from": saved_world}
    return manifest["step"], extra


def finished_at(ckpt_dir: str | os.PathLike, resume_from: str, steps: int) -> int | None:
    """The step of the checkpoint a ``latest`` resume would continue from, when it is at or
    past ``steps`` (a finished run: nothing to build), else None. Collective; verifies only
    when the newest checkpoint directory is that far."""
    if resume_from != "latest":
        return None
    newest = _from_rank0(list_checkpoints(ckpt_dir)[:1])
    if not newest or int(_STEP_DIR.match(newest[0].name).group(1)) < steps:
        return None
    path = find_latest(ckpt_dir)
    step = None if path is None else int(read_manifest(path)["step"])
    return step if step is not None and step >= steps else None


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
        if _rank_world()[0] == 0 and Path(ckpt_dir).is_dir():
            remove_stale(Path(ckpt_dir))
        path = find_latest(ckpt_dir)
        return None if path is None else load_checkpoint(engine, path, ema)
    problems = verify_checkpoint(resume_from)
    if problems:
        raise CheckpointError(
            f"checkpoint.resume={resume_from!r} is unusable: {'; '.join(problems)}"
        )
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
        "numpy": [torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],  # type: ignore[attr-defined]
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
