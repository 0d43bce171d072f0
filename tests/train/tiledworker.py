"""One rank of a tiled training run that records every NetCDF read (``torchrun ... tiledworker.py
CONFIG OUT_DIR [overrides]``).

The real trainer runs unchanged; the only addition is the data layer's ``on_read`` hook on the
sources the trainer opens, which logs (group, variable, rows, cols) of each netCDF4 read. Each
rank writes ``OUT_DIR/reads_rank{rank}.json`` with its reads and the window it was given.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from hpcdiff.experiment.config import load_config
from hpcdiff.train import loop


def main() -> None:
    config, out_dir, *overrides = sys.argv[1:]
    rank = int(os.environ["RANK"])
    reads: list[dict] = []
    parts: list = []
    open_sources, partition = loop.open_sources, loop.partition

    def recording_sources(cfg):
        sources = open_sources(cfg)
        for group, source in sources.items():

            def hook(path, variable, key, group=group, source=source):
                dims = source.files[0].variables[variable].dims
                sel = dict(zip(dims.order, key))
                rows, cols = sel[dims.y], sel[dims.x]
                reads.append(
                    {
                        "group": group,
                        "variable": variable,
                        "rows": [rows.start, rows.stop],
                        "cols": [cols.start, cols.stop],
                    }
                )

            source.on_read = hook
        return sources

    def recording_partition(*args):
        parts.append(partition(*args))
        return parts[-1]

    loop.open_sources, loop.partition = recording_sources, recording_partition
    run_dir = loop.train(load_config(config, overrides))
    window = parts[0].window
    record = {"window": [window.row0, window.row1, window.col0, window.col1], "reads": reads}
    Path(out_dir, f"reads_rank{rank}.json").write_text(json.dumps(record))
    print(run_dir)


if __name__ == "__main__":
    main()
