"""Framework overhead of ``sample()`` per solver step against hand-written plain-torch steps.

Both sides call the same trivial denoiser (x0 = 0.5 x, so the EDM rhs is (x - x0)/t = 0.5 x/t)
on the same state and grid; the baseline does the fewest full-state memory passes the update
needs, in place, with Python-float coefficients. Prints ms per step and the ratio (target
<= 1.5). Run: ``python benchmarks/bench_sampler_overhead.py [--shape 4 1024 1024]``.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import math
import time
from collections.abc import Callable

import torch

from hpcdiff.diffusion.samplers import sample


class EDMGrid:
    """alpha = 1, sigma = t, with a geometric grid from t_max to t_min (no step to 0, so every
    step is a full step)."""

    def __init__(self, t_max: float = 80.0, t_min: float = 0.5) -> None:
        self.t_max, self.t_min = t_max, t_min

    def timesteps(self, num_steps, *, device=None, dtype=None):
        return torch.logspace(
            math.log10(self.t_max), math.log10(self.t_min), num_steps + 1,
            device=device, dtype=dtype,
        )  # fmt: skip

    def alpha(self, t):
        return torch.ones_like(t)

    def alpha_dot(self, t):
        return torch.zeros_like(t)

    def sigma(self, t):
        return t

    def sigma_dot(self, t):
        return torch.ones_like(t)


def x0_predictor(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return x * 0.5


def rhs(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """EDM probability-flow rhs (x - x0)/t for x0 = 0.5 x, in one pass."""
    return x * (0.5 / t).view(-1, *([1] * (x.ndim - 1)))


def baseline_euler(x: torch.Tensor, grid: list[float], ts: list[torch.Tensor]) -> torch.Tensor:
    for i in range(len(grid) - 1):
        d = rhs(x, ts[i])
        h = grid[i + 1] - grid[i]
        x = torch.add(x, d, alpha=h) if i == 0 else x.add_(d, alpha=h)  # 1 pass
    return x


def baseline_heun(x: torch.Tensor, grid: list[float], ts: list[torch.Tensor]) -> torch.Tensor:
    for i in range(len(grid) - 1):
        h = grid[i + 1] - grid[i]
        d = rhs(x, ts[i])
        d_prime = rhs(torch.add(x, d, alpha=h), ts[i + 1])  # 1 pass
        x = torch.add(x, d, alpha=h / 2) if i == 0 else x.add_(d, alpha=h / 2)  # 1 pass
        x.add_(d_prime, alpha=h / 2)  # 1 pass
    return x


def _dpm_coefficients(grid: list[float], i: int) -> tuple[float, float, float]:
    """(a, b, c) of x_next = a x + b D_n + c D_{n+1} for alpha = 1, sigma = t."""
    h = math.log(grid[i] / grid[i + 1])
    b = -math.expm1(-h)
    if i == 0:
        return grid[i + 1] / grid[i], b, 0.0
    k = h / (2 * math.log(grid[i - 1] / grid[i]))
    return grid[i + 1] / grid[i], b * (1 + k), -b * k


def baseline_dpm(
    x: torch.Tensor, grid: list[float], ts: list[torch.Tensor], ode: bool
) -> torch.Tensor:
    prev = None
    for i in range(len(grid) - 1):
        if ode:  # x0 = x - t F for alpha = 1, sigma = t: 2 passes
            x0 = torch.mul(rhs(x, ts[i]), -grid[i]).add_(x)
        else:
            x0 = x0_predictor(x, ts[i])
        a, b, c = _dpm_coefficients(grid, i)
        x = (torch.mul(x, a) if i == 0 else x.mul_(a)).add_(x0, alpha=b)  # 2 passes
        if prev is not None:
            x.add_(prev, alpha=c)  # 1 pass
        prev = x0
    return x


def best_times(
    fns: tuple[Callable[[], torch.Tensor], ...], repeats: int, clock: Callable[[], float]
) -> list[float]:
    """Best time of each function over ``repeats`` interleaved runs (interleaving spreads
    machine noise evenly over the candidates)."""
    best = [math.inf] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = clock()
            fn()
            best[i] = min(best[i], clock() - start)
    return best


def keep_freed_memory() -> bool:
    """Ask glibc malloc to serve large blocks from the heap and never trim it, so freed state
    buffers are reused like a caching allocator does, instead of being unmapped and
    page-faulted in again on every step (noise that hits whichever side allocates more)."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name)
    if not hasattr(libc, "mallopt"):
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs="+", default=[4, 1024, 1024],
                        help="state shape, batch first (default 4 1024 1024)")  # fmt: skip
    parser.add_argument("--steps", type=int, default=8, help="solver steps per sample() call")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs; the best is kept")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: default)")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                        help="cpu: process CPU time, robust on a shared machine with 1 thread; "
                             "wall: elapsed time")  # fmt: skip
    parser.add_argument("--no-malloc-tune", action="store_true",
                        help="leave glibc malloc trimming on (page-fault noise)")  # fmt: skip
    args = parser.parse_args()
    tuned = not args.no_malloc_tune and keep_freed_memory()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    x = torch.randn(*args.shape, generator=torch.Generator().manual_seed(0))
    sch = EDMGrid()
    ts_grid = sch.timesteps(args.steps, dtype=torch.float32)
    grid = ts_grid.tolist()
    ts = [t.expand(x.shape[0]) for t in ts_grid]  # what sample() hands the denoiser
    cases = {
        "euler": (
            lambda: sample(rhs, x, sch, args.steps, solver="euler"),
            lambda: baseline_euler(x, grid, ts),
        ),
        "heun": (
            lambda: sample(rhs, x, sch, args.steps, solver="heun"),
            lambda: baseline_heun(x, grid, ts),
        ),
        "dpm++2m (x0)": (
            lambda: sample(
                x0_predictor,
                x,
                sch,
                args.steps,
                solver="dpm++2m",
                solver_options={"denoiser_type": "x0"},
            ),  # fmt: skip
            lambda: baseline_dpm(x, grid, ts, ode=False),
        ),
        "dpm++2m (ode rhs)": (
            lambda: sample(rhs, x, sch, args.steps, solver="dpm++2m"),
            lambda: baseline_dpm(x, grid, ts, ode=True),
        ),
    }
    mib = x.numel() * x.element_size() / 2**20
    print(f"state {tuple(x.shape)} {x.dtype} ({mib:.0f} MiB), {args.steps} steps, "
          f"{torch.get_num_threads()} threads, best of {args.repeats}, {args.clock} time, "
          f"malloc tuned: {tuned}")  # fmt: skip
    print("target: ratio <= 1.5")
    print(f"{'solver':<20}{'sample() ms/step':>18}{'baseline ms/step':>18}{'ratio':>8}")
    with torch.no_grad():
        for name, (framework, baseline) in cases.items():
            err = (framework() - baseline()).abs().max().item()
            t_fw, t_base = (
                t / args.steps * 1e3 for t in best_times((framework, baseline), args.repeats, clock)
            )
            print(f"{name:<20}{t_fw:>18.2f}{t_base:>18.2f}{t_fw / t_base:>8.2f}"
                  f"   (max |diff| {err:.1e})")  # fmt: skip


if __name__ == "__main__":
    main()
