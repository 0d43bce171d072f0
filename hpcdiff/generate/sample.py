"""``hpcdiff sample``: generate ensembles from a trained run with multi-diffusion sampling.

Every run, one process or many, goes through the tiled sampler of
:mod:`hpcdiff.generate.distributed`: the global state is split into ``sample.domain_grid``
tiles over the ranks of each domain group (one tile on one rank), patches are denoised where
they are owned and their fused contributions exchanged as halos. Noise is keyed by
(``sample.seed``, time, member, global position), never by rank, so 1, 2 or 64 ranks write
the same ``<run>/samples/samples.nc`` (CF metadata, physical units, truth alongside) and one
PNG per variable.
"""

from __future__ import annotations

from pathlib import Path

from hpcdiff.experiment.config import load_config


def generate(run_dir: str | Path, overrides: list[str] = ()) -> dict:
    """Sample ``sample.ensemble`` members for the first ``sample.times`` validation times."""
    from hpcdiff.generate.distributed import generate_distributed

    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "config.yaml", list(overrides))
    return generate_distributed(run_dir, cfg)
