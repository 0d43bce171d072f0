"""Checkpoint manifest, verification and fallback on the real files a ZeRO-3 run wrote; RNG
state capture. (Resume after a kill runs in test_dist_failures.)"""

from __future__ import annotations

import logging
import random
import shutil

import numpy as np
import pytest
import torch
from distworker import PositionalEmbedding, reference_run

from hpcdiff.core import Module
from hpcdiff.distributed.checkpoint import (
    capture_rng_state,
    find_latest,
    list_checkpoints,
    read_manifest,
    restore_rng_state,
    verify_checkpoint,
)


@pytest.fixture
def ckpts(single_run, tmp_path):
    """A private copy of the single-process run's checkpoints (steps 2 and 3 are kept)."""
    return shutil.copytree(single_run["ckpt"], tmp_path / "ckpt")


@pytest.mark.multiprocess
def test_manifest_lists_every_file_with_its_checksum(ckpts):
    newest, older = list_checkpoints(ckpts)  # step 1 was pruned (keep_last=2)
    assert (newest.name, older.name) == ("step_000000003", "step_000000002")
    manifest = read_manifest(newest)
    assert (manifest["step"], manifest["world_size"], manifest["zero_stage"]) == (3, 1, 3)
    assert manifest["has_ema"] and manifest["model_spec"]["class"] == "distworker:TinyNet"
    files = sorted(p.relative_to(newest).as_posix() for p in newest.rglob("*") if p.is_file())
    assert sorted(manifest["files"]) == [f for f in files if f != "manifest.json"]
    assert set(manifest["files"]) == {"state/rank_00000.pt", "extra/rank_00000.pt", "module.pt"}
    assert all(len(v["sha256"]) == 64 for v in manifest["files"].values())
    assert verify_checkpoint(newest) == []


@pytest.mark.multiprocess
def test_truncated_newest_checkpoint_falls_back_with_a_warning(ckpts, caplog):
    newest, older = list_checkpoints(ckpts)
    victim = newest / "state" / "rank_00000.pt"
    size = victim.stat().st_size
    victim.write_bytes(victim.read_bytes()[: size // 2])
    assert verify_checkpoint(newest) == [
        f"state/rank_00000.pt has {size // 2} bytes, expected {size}"
    ]
    with caplog.at_level(logging.WARNING, logger="hpcdiff"):
        assert find_latest(ckpts) == older
    assert "step_000000003 is corrupt or incomplete" in caplog.text


@pytest.mark.multiprocess
def test_flipped_bytes_missing_files_and_manifests_are_detected(ckpts, caplog):
    newest, older = list_checkpoints(ckpts)
    victim = newest / "extra" / "rank_00000.pt"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different content
    victim.write_bytes(bytes(data))
    assert verify_checkpoint(newest) == ["extra/rank_00000.pt fails its sha256 checksum"]
    (older / "manifest.json").unlink()
    assert "no readable manifest" in verify_checkpoint(older)[0]
    with caplog.at_level(logging.WARNING, logger="hpcdiff"):
        assert find_latest(ckpts) is None
    assert [r.levelname for r in caplog.records].count("WARNING") == 2


@pytest.mark.multiprocess
def test_unfinished_save_is_never_a_candidate(ckpts):
    newest, _ = list_checkpoints(ckpts)
    shutil.copytree(newest, ckpts / ".tmp_step_000000004")  # a save that never got renamed
    assert list_checkpoints(ckpts)[0] == newest
    assert find_latest(ckpts) == newest


@pytest.mark.multiprocess
def test_consolidation_checks_and_writes_a_plain_state_dict(ckpts, tmp_path):
    from hpcdiff.distributed.consolidate import consolidate_checkpoint

    newest, _ = list_checkpoints(ckpts)
    out = consolidate_checkpoint(newest, tmp_path / "model.pt", weights="model")
    state = torch.load(out, weights_only=True)
    for name, value in reference_run(3)["state"].items():
        torch.testing.assert_close(state[name], value, rtol=1e-5, atol=1e-6)
    part = consolidate_checkpoint(newest, tmp_path / "out.pt", "model", submodule="out")
    assert sorted(torch.load(part, weights_only=True)) == ["bias", "weight"]
    embed = Module.from_checkpoint(
        consolidate_checkpoint(newest, tmp_path / "embed.mdlus", "model", submodule="embed")
    )
    assert isinstance(embed, PositionalEmbedding) and torch.equal(embed.pos, state["embed.pos"])
    with pytest.raises(ValueError, match="no submodule 'head'"):
        consolidate_checkpoint(newest, tmp_path / "h.mdlus", submodule="head")
    with pytest.raises(ValueError, match="'mid' is not an hpcdiff.core.Module"):
        consolidate_checkpoint(newest, tmp_path / "m.mdlus", submodule="mid")
    with pytest.raises(ValueError, match="weights='last'"):
        consolidate_checkpoint(newest, tmp_path / "x.pt", weights="last")
    (newest / "module.pt").unlink()
    with pytest.raises(ValueError, match="corrupt or incomplete"):
        consolidate_checkpoint(newest, tmp_path / "y.pt")


@pytest.mark.multiprocess
def test_consolidate_once_reuses_a_current_mdlus_and_redoes_a_stale_one(ckpts, tmp_path, caplog):
    from hpcdiff.core.module import read_metadata
    from hpcdiff.distributed.consolidate import (
        consolidate_checkpoint,
        consolidate_once,
        ema_state_dict,
        is_current,
    )

    newest, older = list_checkpoints(ckpts)
    out = tmp_path / "model.mdlus"
    with caplog.at_level(logging.INFO, logger="hpcdiff.distributed.consolidate"):
        consolidate_once(older, out)
        consolidate_once(older, out)  # current: not merged again
        assert read_metadata(out)["consolidated_from"]["step"] == 2
        consolidate_once(newest, out)  # stale (older step): merged again
    merges = [r.message for r in caplog.records if "once, on rank 0" in r.message]
    reuses = [r.message for r in caplog.records if "consolidated from" in r.message]
    assert len(merges) == 2 and len(reuses) == 1
    assert read_metadata(out)["consolidated_from"]["step"] == 3
    merged = Module.from_checkpoint(out).state_dict()
    for name, value in ema_state_dict(newest).items():
        assert torch.equal(merged[name], value), name
    part = consolidate_checkpoint(newest, tmp_path / "embed.mdlus", submodule="embed")
    assert not is_current(part, newest)  # a submodule export is not the whole module


def test_rng_state_survives_a_weights_only_round_trip(tmp_path):
    state = capture_rng_state()
    first = (random.random(), np.random.rand(), torch.rand(3))  # noqa: NPY002
    torch.save(state, tmp_path / "rng.pt")
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = (random.random(), np.random.rand(), torch.rand(3))  # noqa: NPY002
    assert first[:2] == again[:2] and torch.equal(first[2], again[2])


@pytest.mark.multiprocess
def test_a_flipped_byte_past_the_first_hashing_piece_is_found(ckpts):
    """Files are hashed in 8 MiB pieces: damage in a later piece must be found too."""
    import hashlib
    import json

    newest, _ = list_checkpoints(ckpts)
    big = newest / "extra" / "big.bin"
    data = bytearray(torch.randint(0, 256, (9 << 20,), dtype=torch.uint8).numpy().tobytes())
    big.write_bytes(bytes(data))
    manifest = read_manifest(newest)
    manifest["files"]["extra/big.bin"] = {
        "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()
    }  # fmt: skip
    (newest / "manifest.json").write_text(json.dumps(manifest))
    assert verify_checkpoint(newest) == []
    data[(8 << 20) + 12345] ^= 0x01
    big.write_bytes(bytes(data))
    assert verify_checkpoint(newest) == ["extra/big.bin fails its sha256 checksum"]
