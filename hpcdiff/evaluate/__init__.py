"""Evaluation of generated ensembles (``hpcdiff evaluate``): skill scores, spectra, seams, plots.

* :func:`evaluate` / :func:`evaluate_run` - score a samples file (or a run's newest one) and
  write ``metrics.json`` and PNG plots;
* :class:`VariableScores` - the per-variable accumulator (RMSE of the ensemble mean, fair CRPS,
  spread-skill ratio, rank histogram, power spectra, seam score), fed one time step at a time;
* :func:`patch_lines`, :func:`cell_phases`, :func:`seam_sums`, :func:`rank_counts` - its
  building blocks;
* :class:`SamplesFile`, :class:`PatchGrid` - the inputs.

Names are imported on first use, so ``hpcdiff --help`` does not load torch or netCDF4.
"""

from __future__ import annotations

from hpcdiff.lazy import lazy_exports

_EXPORTS = {
    "SamplesFile": "hpcdiff.evaluate.inputs",
    "PatchGrid": "hpcdiff.evaluate.run",
    "evaluate": "hpcdiff.evaluate.run",
    "evaluate_run": "hpcdiff.evaluate.run",
    "VariableScores": "hpcdiff.evaluate.scores",
    "patch_lines": "hpcdiff.evaluate.scores",
    "rank_counts": "hpcdiff.evaluate.scores",
    "seam_sums": "hpcdiff.evaluate.scores",
    "cell_phases": "hpcdiff.evaluate.scores",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
