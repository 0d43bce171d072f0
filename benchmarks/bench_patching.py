"""Grid patch extraction + fusing against the memory-bandwidth ceiling and an unfold/fold baseline.

Each method runs in a fresh process (so its peak RSS is its own) on a (2, 4, 2048, 2048)
float32 state with 256 x 256 patches, overlap 32, boundary 8, and reports the best of
``--repeat`` runs of ``fuse(extract(x))``:

* ``clone``: ``x.clone()``, one read and one write of the state (the bandwidth ceiling);
* ``unfold``: reflect pad + ``F.unfold`` + rearrange + ``F.fold`` + crop / overlap count;
* ``hpcdiff``: ``GridPatching2D.apply`` + ``fuse`` (strided block copies, weighted adds);
* ``reference``: physicsnemo's ``GridPatching2D`` (with ``--reference``, if importable).

"peak extra" is the peak RSS above the RSS once the state exists, in MiB (Linux VmHWM, reset
through /proc/self/clear_refs).

``--sample`` adds a bounded-memory check: EDM sampling (2 Euler steps) of a 1 GiB state
(1, 4, 8192, 8192) with a 1x1-conv patch model, 512 x 512 patches (overlap 32, boundary 8),
``MultiDiffusionPredictor`` with and without ``chunk_size``; it prints the peak RSS above the
initial noise in units of the state size.

    python benchmarks/bench_patching.py [--reference] [--repeat 5] [--threads N] [--sample]

On a shared machine ``--threads 1`` gives steadier numbers: with more torch threads than free
cores every parallel region waits for descheduled threads, which penalizes many small copies.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

B, C, PATCH, OVERLAP, BOUNDARY = 2, 4, 256, 32, 8


def _rss_mib() -> float:
    """Current RSS; also resets the peak (Linux: writing 5 to clear_refs resets VmHWM)."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def _peak_mib() -> float:
    """Peak RSS since the last :func:`_rss_mib` (VmHWM)."""
    with open("/proc/self/status") as fh:
        line = next(ln for ln in fh if ln.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def _unfold_fold(size: int):
    """The straightforward implementation: pad, unfold, rearrange, fold, normalize."""
    import torch
    import torch.nn.functional as F

    s = PATCH - OVERLAP - BOUNDARY
    n = math.ceil(size / s)
    padded = s * (n - 1) + PATCH + BOUNDARY
    right = padded - size - BOUNDARY
    ones = torch.ones(1, 1, padded, padded)
    count = F.fold(F.unfold(ones, PATCH, stride=s), padded, PATCH, stride=s)
    count = count[..., BOUNDARY : BOUNDARY + size, BOUNDARY : BOUNDARY + size]

    def run(x):
        xp = F.pad(x, (BOUNDARY, right, BOUNDARY, right), mode="reflect")
        cols = F.unfold(xp, PATCH, stride=s)  # (B, C Hp Wp, L), L = n_y n_x row-major
        patches = cols.reshape(B, C, PATCH, PATCH, n, n).permute(5, 4, 0, 1, 2, 3)
        patches = patches.reshape(n * n * B, C, PATCH, PATCH)  # x-major patch order
        cols = patches.reshape(n, n, B, C * PATCH * PATCH).permute(2, 3, 1, 0)
        folded = F.fold(cols.reshape(B, -1, n * n), padded, PATCH, stride=s)
        return folded[..., BOUNDARY : BOUNDARY + size, BOUNDARY : BOUNDARY + size] / count

    return run


def _patching(module, size: int):
    gp = module.GridPatching2D((size, size), (PATCH, PATCH), OVERLAP, BOUNDARY)
    return lambda x: gp.fuse(gp.apply(x), batch_size=B)


def _time_worker(method: str, size: int, repeat: int, threads: int, queue) -> None:
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    x = torch.randn(B, C, size, size)
    if method == "clone":
        run = torch.clone
    elif method == "unfold":
        run = _unfold_fold(size)
    elif method == "hpcdiff":
        import hpcdiff.diffusion.multi_diffusion as md

        run = _patching(md, size)
    else:
        import physicsnemo.diffusion.multi_diffusion as md

        run = _patching(md, size)
    with torch.no_grad():
        out = run(x)
        error = float((out - x).abs().max())
        del out
        base = _rss_mib()
        best = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            run(x)
            best = min(best, time.perf_counter() - t0)
    queue.put((best, _peak_mib() - base, error))


def _sample_worker(chunk_size: int, threads: int, queue) -> None:
    import torch

    from hpcdiff.core import Module
    from hpcdiff.diffusion.multi_diffusion import MultiDiffusionModel2D, MultiDiffusionPredictor
    from hpcdiff.diffusion.noise_schedulers import EDMNoiseScheduler
    from hpcdiff.diffusion.samplers import sample

    class Net(Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Conv2d(4, 4, 1)

        def forward(self, x, t, condition=None):
            return self.net(x)

    if threads > 0:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    md = MultiDiffusionModel2D(Net(), (8192, 8192))
    md.set_random_patching((512, 512), patch_num=1)
    predictor = MultiDiffusionPredictor(md, chunk_size=chunk_size or None)
    predictor.set_patching(overlap_pix=OVERLAP, boundary_pix=BOUNDARY)
    sched = EDMNoiseScheduler()
    xN = 80 * torch.randn(1, 4, 8192, 8192)
    state_mib = xN.numel() * 4 / 2**20
    base = _rss_mib()
    t0 = time.perf_counter()
    with torch.no_grad():
        x0 = sample(sched.get_denoiser(x0_predictor=predictor), xN, sched, 2, solver="euler")
    elapsed = time.perf_counter() - t0
    queue.put((elapsed, (_peak_mib() - base) / state_mib, bool(torch.isfinite(x0).all())))


def _spawn(target, *args):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def _bench_patching(args, methods: list[str]) -> None:
    state_mb = B * C * args.size**2 * 4 / 2**20
    print(
        f"state ({B}, {C}, {args.size}, {args.size}) float32 = {state_mb:.0f} MiB; patches "
        f"{PATCH}x{PATCH}, overlap {OVERLAP}, boundary {BOUNDARY}; best of {args.repeat}; "
        f"threads {args.threads or 'default'}"
    )
    res = {m: _spawn(_time_worker, m, args.size, args.repeat, args.threads) for m in methods}
    clone = res["clone"][0]
    header = ("method", "time [ms]", "x clone", "peak extra [MiB]", "max|err|")
    print("{:<10} {:>10} {:>8} {:>17} {:>9}".format(*header))
    for m, (t, extra, err) in res.items():
        print(f"{m:<10} {1e3 * t:10.1f} {t / clone:8.2f} {extra:17.0f} {err:9.1e}")
    mine = res["hpcdiff"][0]
    print(
        f"hpcdiff: {res['unfold'][0] / mine:.2f}x faster than unfold/fold (target >= 3), "
        f"{mine / clone:.2f}x a clone (target <= 8)"
    )
    if "reference" in res:
        print(f"hpcdiff: {res['reference'][0] / mine:.2f}x faster than the reference")


def _bench_sampling(args) -> None:
    print("sampling a (1, 4, 8192, 8192) float32 state (1 GiB), 512x512 patches, 2 Euler steps")
    for chunk in (0, 16):
        elapsed, peak, finite = _spawn(_sample_worker, chunk, args.threads)
        label = f"chunk_size={chunk}" if chunk else "unchunked"
        print(
            f"{label:<15} {elapsed:7.1f} s   peak RSS above xN = {peak:.2f} x state   "
            f"finite={finite}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", action="store_true", help="also time physicsnemo")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--sample", action="store_true", help="bounded-memory sampling check")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

    methods = ["clone", "unfold", "hpcdiff"]
    if args.reference:
        try:
            import physicsnemo.diffusion.multi_diffusion  # noqa: F401

            methods.append("reference")
        except ImportError as err:
            print(f"--reference: physicsnemo not importable ({err}); skipped")
    _bench_patching(args, methods)
    if args.sample:
        _bench_sampling(args)


if __name__ == "__main__":
    main()
