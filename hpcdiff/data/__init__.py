"""Climate data for hpcdiff: NetCDF streaming with rank-local reads, stats, synthetic dataset.

Main entry points (imported on first use, so worker processes load only what they need):

* :class:`DataConfig` - the ``data:`` config section;
* :class:`DataStream` - per-rank batches (tile or random chunk-aligned windows), prefetched;
* :class:`Batch`, :func:`cut_patches` - what a step gets, and random patches with global
  positions;
* :class:`GridSource` - a validated multi-file grid; :func:`to_dask` its lazy dask view;
* :class:`TimeSampler`, :class:`Tile`, :func:`split_domain`, :func:`tile_for_rank`;
* :func:`compute_stats`, :class:`Normalizer`; :func:`write_dataset` (``hpcdiff data synth``);
* :class:`DataError`, :class:`DataTypeError` - bad input, naming file, variable and index.
"""

from __future__ import annotations

from hpcdiff.lazy import lazy_exports

_EXPORTS = {
    "Batch": "hpcdiff.data.batch",
    "PatchBatch": "hpcdiff.data.batch",
    "cut_patches": "hpcdiff.data.batch",
    "DataConfig": "hpcdiff.data.config",
    "DataError": "hpcdiff.data.errors",
    "DataTypeError": "hpcdiff.data.errors",
    "GridSource": "hpcdiff.data.reader",
    "to_dask": "hpcdiff.data.lazy",
    "Normalizer": "hpcdiff.data.normalize",
    "compute_stats": "hpcdiff.data.stats",
    "TimeSampler": "hpcdiff.data.sampler",
    "DataStream": "hpcdiff.data.stream",
    "SynthConfig": "hpcdiff.data.synth",
    "write_dataset": "hpcdiff.data.synth",
    "Tile": "hpcdiff.data.tiles",
    "split_domain": "hpcdiff.data.tiles",
    "tile_for_rank": "hpcdiff.data.tiles",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
