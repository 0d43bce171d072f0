"""Backbones: the SongUNet family and DiT, adapters to ``DiffusionModel``, PhysicsNeMo import.

Names load lazily on first access, so ``import hpcdiff.models`` stays cheap.
"""

from __future__ import annotations

from hpcdiff.lazy import lazy_exports

_EXPORTS = {
    "SongUNet": "hpcdiff.models.song_unet",
    "SongUNetPosEmbd": "hpcdiff.models.song_unet_pos",
    "positional_grid": "hpcdiff.models.song_unet_pos",
    "DiT": "hpcdiff.models.dit",
    "SongUNetDiffusionModel": "hpcdiff.models.adapters",
    "DiffusionModelAdapter": "hpcdiff.models.adapters",
    "split_condition": "hpcdiff.models.conditioning",
    "POSITIONAL_EMBEDDING_KEY": "hpcdiff.models.conditioning",
    "load_physicsnemo": "hpcdiff.models.physicsnemo_import",
    "create_model": "hpcdiff.models.registry",
    "model_names": "hpcdiff.models.registry",
    "count_parameters": "hpcdiff.models.registry",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
