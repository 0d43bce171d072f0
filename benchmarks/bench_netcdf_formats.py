"""Streaming the same data from NetCDF3 and NetCDF4: hpcdiff's DataStream against a raw read.

Writes (once; reused while the size matches) three files holding the same 4 float32 variables
on a 1024 x 1024 grid, as many hourly steps as ``--size`` GiB of float32 needs:

* ``nc3``: NetCDF3 64-bit offset (WRF's default, legacy archives): contiguous records;
* ``nc4``: NetCDF4, chunks (1, 256, 256), uncompressed;
* ``nc4z``: NetCDF4, chunks (1, 256, 256), zlib level 1 + shuffle.

Then per file, in this process, best of ``--repeat`` interleaved runs:

* ``bytes``: the whole file read in 16 MiB blocks (the ceiling: no decoding, sequential);
* ``tile``: a tile-mode DataStream over the whole grid (every variable, every time step:
  sequential whole-record reads in NetCDF3);
* ``patch``: a patch-mode DataStream of random 256 x 256 windows (chunk-aligned in NetCDF4,
  anywhere in NetCDF3, which has no chunks), all 4 variables.

MB/s counts decoded float32 bytes delivered per wall second (file bytes for ``bytes``); the
ratio column divides by the ``bytes`` MB/s of the same file. The page cache is warm unless
``--drop-caches`` (root; affects the whole machine).

    python benchmarks/bench_netcdf_formats.py              # 0.25 GiB per file, ~1 minute
    python benchmarks/bench_netcdf_formats.py --size 1 --drop-caches
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import netCDF4
import numpy as np

from hpcdiff.data.config import DataConfig
from hpcdiff.data.reader import HANDLES
from hpcdiff.data.stream import DataStream

GRID, CHUNK, PATCH = 1024, 256, 256
VARS = ("v0", "v1", "v2", "v3")
MIB = 2**20
FORMATS = {
    "nc3": ("NETCDF3_64BIT_OFFSET", {}),
    "nc4": ("NETCDF4", {"chunksizes": (1, CHUNK, CHUNK)}),
    "nc4z": ("NETCDF4", {"chunksizes": (1, CHUNK, CHUNK), "zlib": True, "complevel": 1,
                         "shuffle": True}),
}  # fmt: skip


def make_file(path: Path, kind: str, steps: int) -> None:
    """The benchmark file ``kind`` with ``steps`` time steps (kept if already written)."""
    if path.exists():
        with netCDF4.Dataset(path) as ds:
            if ds.dimensions["time"].size == steps:
                return
    fmt, storage = FORMATS[kind]
    rng = np.random.default_rng(0)
    y, x = np.meshgrid(np.arange(GRID), np.arange(GRID), indexing="ij")
    bases = [np.sin(2 * np.pi * (k + 1) * (x + 2 * y) / GRID) * 10 for k in range(len(VARS))]
    with netCDF4.Dataset(path, "w", format=fmt) as ds:
        ds.createDimension("time", None)
        tvar = ds.createVariable("time", "f8", ("time",))
        tvar.units, tvar.axis = "hours since 2000-01-01", "T"
        for name, axis in (("y", "Y"), ("x", "X")):
            ds.createDimension(name, GRID)
            c = ds.createVariable(name, "f8", (name,))
            c.axis, c[:] = axis, np.arange(GRID) * 1000.0  # fmt: skip
        variables = [ds.createVariable(v, "f4", ("time", "y", "x"), **storage) for v in VARS]
        for t in range(steps):
            tvar[t] = float(t)
            for var, base in zip(variables, bases):
                var[t] = (base + rng.standard_normal((GRID, GRID))).astype(np.float32)


def drop_caches(enabled: bool) -> None:
    if enabled:
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("3\n")


def read_bytes(path: Path) -> float:
    """MB/s of reading the whole file sequentially."""
    t0, n = time.perf_counter(), 0
    with open(path, "rb", buffering=0) as fh:
        while block := fh.read(16 * MIB):
            n += len(block)
    return n / MIB / (time.perf_counter() - t0)


def stream(path: Path, mode: str, batches: int) -> float:
    """MB/s of decoded float32 delivered by a DataStream in ``mode``."""
    cfg = DataConfig(files=[str(path)], variables=list(VARS), mode=mode, batch_size=2,
                     patch_shape=(PATCH, PATCH), prefetch=2, workers=0)  # fmt: skip
    n = 0
    with DataStream(cfg, split="train") as s:
        t0 = time.perf_counter()
        for _ in range(batches):
            n += next(s).data.numel() * 4
        seconds = time.perf_counter() - t0
    HANDLES.close_all()
    return n / MIB / seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=float, default=0.25, help="GiB of float32 per file")
    p.add_argument("--dir", default="bench_data", help="where the files are kept")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--drop-caches", action="store_true")
    args = p.parse_args()
    folder = Path(args.dir)
    folder.mkdir(exist_ok=True)
    steps = max(2, int(args.size * 2**30 / (len(VARS) * GRID * GRID * 4)))
    paths = {k: folder / f"formats_{k}.nc" for k in FORMATS}
    for kind, path in paths.items():
        make_file(path, kind, steps)
    tile_batches = steps // 2  # one pass over the times
    patch_batches = 4 * steps
    best: dict = {}
    for _ in range(args.repeat):
        for kind, path in paths.items():
            for method in ("bytes", "tile", "patch"):
                drop_caches(args.drop_caches)
                if method == "bytes":
                    rate = read_bytes(path)
                else:
                    rate = stream(path, method, tile_batches if method == "tile" else patch_batches)
                best[kind, method] = max(best.get((kind, method), 0.0), rate)
    cache = "cold" if args.drop_caches else "warm"
    print(f"{steps} steps x {len(VARS)} vars x {GRID}^2 float32 per file, {cache} page cache, "
          f"best of {args.repeat}")  # fmt: skip
    print(f"{'file':6s} {'size MiB':>9s} {'method':7s} {'MB/s':>8s} {'ratio to bytes':>15s}")
    for kind, path in paths.items():
        for method in ("bytes", "tile", "patch"):
            rate = best[kind, method]
            ratio = rate / best[kind, "bytes"]
            print(f"{kind:6s} {path.stat().st_size / MIB:9.0f} {method:7s} {rate:8.0f} "
                  f"{ratio:15.2f}")  # fmt: skip
    nc3, nc4 = best["nc3", "patch"], best["nc4", "patch"]
    print(f"patch streaming NetCDF3 / NetCDF4 (uncompressed): {nc3 / nc4:.2f}")
    print(f"tile streaming NetCDF3 / NetCDF4 (uncompressed): "
          f"{best['nc3', 'tile'] / best['nc4', 'tile']:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
