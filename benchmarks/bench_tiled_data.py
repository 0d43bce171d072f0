"""Per-rank data memory of tiled training: each rank's window, host memory and bytes read per
batch shrink with ``domain.grid``, instead of every rank holding the whole domain.

Writes (once) a synthetic dataset with ``hpcdiff data synth`` (4 fine variables, their coarse
counterparts, 2 static fields, 256 x 256 chunks) on a ``--shape`` grid, then for each domain
grid starts a fresh process playing domain rank 0 (the largest window) that opens the data
exactly as ``hpcdiff train`` does (:func:`hpcdiff.train.loop.partition` and ``open_stream``)
and reads ``--batches`` batches. Printed per grid: the window, MiB of one batch (data, mask,
condition, static), MiB decoded from NetCDF per batch (counted by the reader's ``on_read``
hook), peak RSS growth of the process while streaming, seconds per batch, and ratios against
the 1 x 1 grid (whole domain per rank) measured in the same run.

    python benchmarks/bench_tiled_data.py                       # 4096 x 4096, grids 1x1 2x2 4x4
    python benchmarks/bench_tiled_data.py --shape 2048 2048 --grids 1x1 1x2
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import subprocess
import sys
import time
from pathlib import Path

import yaml

MiB = 2**20


def make_data(out: Path, shape: tuple[int, int], times: int) -> dict:
    """The data section written by ``hpcdiff data synth`` (reused while the shape matches)."""
    cfg_file = out / "data.yaml"
    marker = out / "shape.txt"
    wanted = f"{shape[0]}x{shape[1]}x{times}"
    if not (cfg_file.exists() and marker.exists() and marker.read_text() == wanted):
        cmd = [Path(sys.executable).parent / "hpcdiff", "data", "synth", "--out", str(out),
               "--shape", str(shape[0]), str(shape[1]), "--times", str(times), "--files", "2",
               "--chunk", "256"]  # fmt: skip
        subprocess.run(cmd, check=True)
        marker.write_text(wanted)
    return yaml.safe_load(cfg_file.read_text())["data"]


def _stream_rank0(data: dict, grid: tuple[int, int], batches: int, queue) -> None:
    from hpcdiff.config import from_dict
    from hpcdiff.experiment.config import TrainConfig
    from hpcdiff.train.loop import open_sources, open_stream, partition

    cfg = from_dict(TrainConfig, {"data": data, "domain": {"grid": list(grid)}})
    sources = open_sources(cfg.data)
    decoded = [0]

    def count(path, variable, key):
        rows, cols = key[-2], key[-1]
        decoded[0] += 4 * (rows.stop - rows.start) * (cols.stop - cols.start)

    for source in sources.values():
        source.on_read = count
    part = partition(cfg, sources, rank=0, world=grid[0] * grid[1])
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    stream = open_stream(cfg, part, "train", sources)
    batch = next(stream)  # warm-up: first reads, buffers allocated
    decoded[0] = 0
    t0 = time.perf_counter()
    for _ in range(batches):
        batch = next(stream)
    seconds = (time.perf_counter() - t0) / batches
    stream.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    parts = (batch.data, batch.mask, batch.condition, batch.static)
    nbytes = sum(t.numel() * t.element_size() for t in parts if t is not None)
    queue.put({
        "window": part.window, "batch_mib": nbytes / MiB,
        # prefetched batches are read too: count reads per returned batch over the run
        "read_mib": decoded[0] / MiB / batches, "rss_mib": (peak - base) / MiB, "s": seconds,
    })  # fmt: skip


def measure(data: dict, grid: tuple[int, int], batches: int) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_stream_rank0, args=(data, grid, batches, queue))
    proc.start()
    result = queue.get(timeout=3600)
    proc.join()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=2, default=(4096, 4096))
    ap.add_argument("--grids", nargs="+", default=["1x1", "2x2", "4x4"])
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--patch", type=int, default=256)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--dir", type=Path, default=Path("/var/tmp/hpcdiff-bench/tiled"))
    args = ap.parse_args()
    data = make_data(args.dir, tuple(args.shape), times=4 * args.batch_size + 4)
    data.update(batch_size=args.batch_size, patch_shape=[args.patch, args.patch], prefetch=1,
                valid_time=None, train_time=None)  # fmt: skip
    grids = [tuple(int(v) for v in g.split("x")) for g in args.grids]
    rows = [(g, measure(data, g, args.batches)) for g in grids]
    base = rows[0][1]
    H, W = args.shape
    print(f"grid {H} x {W}, 10 fields (4 fine, 4 coarse regridded, 2 static), "
          f"batch {args.batch_size}, patch {args.patch}; rank 0 of each domain grid")  # fmt: skip
    head = ("domain", "window", "batch MiB", "read MiB/batch", "RSS growth MiB", "s/batch",
            "batch x", "read x", "RSS x")  # fmt: skip
    print(("{:>8} {:>12} {:>10} {:>15} {:>15} {:>8} {:>8} {:>7} {:>6}").format(*head))
    for g, r in rows:
        h, w = r["window"].shape
        print(
            f"{g[0]}x{g[1]:<6} {h:>5} x {w:<5} {r['batch_mib']:>10.1f} {r['read_mib']:>15.1f} "
            f"{r['rss_mib']:>15.1f} {r['s']:>8.2f} {r['batch_mib'] / base['batch_mib']:>8.3f} "
            f"{r['read_mib'] / base['read_mib']:>7.3f} {r['rss_mib'] / base['rss_mib']:>6.3f}"
        )


if __name__ == "__main__":
    main()
