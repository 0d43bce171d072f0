"""Denoiser evaluations (NFE) each solver needs to reach a target error against a 1000-step
reference, on three problems:

* ``gaussian-edm``: data N(mu, s^2) per channel, exact x0 predictor, EDM schedule;
* ``gaussian-rf``: the same data on the rectified-flow path, exact velocity predictor;
* ``gaussian-vp``: the same data on the VP path (where exponential Euler is DDIM, not Euler);
* ``trained-edm``: a small conv net trained here for ``--train-seconds`` (EDM preconditioning,
  DSM loss) on synthetic smooth Gaussian random fields (power spectrum ~ k^-3, 16 x 16).

The reference is 1000 Heun steps on the problem's grid; the error is RMS(x - x_ref) / std(x_ref)
over a fixed batch. Fixed-step solvers run on the scheduler's grid (EDM: rho = 7 steps; RF:
uniform in t) with increasing step counts; the adaptive solver with decreasing tolerances; the
"optimized" row is Heun on ``optimize_schedule``'s grid (calibrated on another batch, its NFE not
counted). Each cell is the NFE of the first setting that meets the target. CPU-cheap:
``python benchmarks/bench_solvers_nfe.py [--train-seconds 90] [--targets 1e-2 1e-3]``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch import nn

from hpcdiff.diffusion.metrics import MSEDSMLoss
from hpcdiff.diffusion.noise_schedulers import (
    EDMNoiseScheduler,
    RectifiedFlowNoiseScheduler,
    VPNoiseScheduler,
)
from hpcdiff.diffusion.preconditioners import EDMPreconditioner
from hpcdiff.diffusion.samplers import AdaptiveSolver, optimize_schedule, sample

STEPS = [2, 3, 4, 5, 6, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 64, 80, 96, 128, 192, 256, 512]
TOLERANCES = [10 ** (0.5 - k / 4) for k in range(21)]
FIXED = ["euler", "heun", "dpmpp_2m", "dpmpp_2m_unic", "exponential_euler"]


class Counted:
    """Counts the denoiser calls a solver makes (one batched call = one evaluation)."""

    def __init__(self, f: Callable) -> None:
        self.f, self.calls = f, 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.f(x, t)


class Problem:
    """A scheduler, an ODE rhs, a start batch xN at t_max and the end time of the adaptive run."""

    def __init__(self, name, scheduler, denoiser, xN, calibration, t_min) -> None:
        self.name, self.scheduler, self.denoiser = name, scheduler, denoiser
        self.xN, self.calibration, self.t_min = xN, calibration, t_min
        self.t_max = float(scheduler.timesteps(2)[0])


# Problems ------------------------------------------------------------------------------------


def gaussian_problems(batch: int) -> list[Problem]:
    mu = torch.tensor([1.0, -0.5, 2.0]).view(3, 1, 1)
    s = torch.tensor([0.5, 1.0, 0.2]).view(3, 1, 1)

    def x0_hat(sch):
        def f(x, t):
            tb = t.view(-1, 1, 1, 1)
            a, sig = sch.alpha(tb), sch.sigma(tb)
            return mu + a * s**2 / (a**2 * s**2 + sig**2) * (x - a * mu)

        return f

    def start(sch, seed):
        t = sch.timesteps(2)[0]
        z = torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
        a, sig = sch.alpha(t), sch.sigma(t)
        return a * mu + (a**2 * s**2 + sig**2).sqrt() * z

    edm, rf, vp = EDMNoiseScheduler(), RectifiedFlowNoiseScheduler(), VPNoiseScheduler()
    velocity = rf.get_denoiser(x0_predictor=x0_hat(rf))  # the exact velocity (x - x0_hat) / t
    return [
        Problem("gaussian-edm", edm, edm.get_denoiser(x0_predictor=x0_hat(edm)),
                start(edm, 0), start(edm, 1), edm.sigma_min),
        Problem("gaussian-rf", rf, rf.get_denoiser(velocity_predictor=velocity),
                start(rf, 0), start(rf, 1), 1e-3),
        Problem("gaussian-vp", vp, vp.get_denoiser(x0_predictor=x0_hat(vp)),
                start(vp, 0), start(vp, 1), vp.epsilon_s),
    ]  # fmt: skip


def smooth_fields(batch: int, size: int = 16, generator: torch.Generator | None = None):
    """Gaussian random fields with power spectrum (k^2 + 1)^(-3/2), unit variance; (B, 1, H, W)."""
    white = torch.randn(batch, 1, size, size, generator=generator)
    k = torch.fft.fftfreq(size) * size
    amplitude = (k.view(-1, 1) ** 2 + k.view(1, -1) ** 2 + 1) ** -0.75
    field = torch.fft.ifft2(torch.fft.fft2(white) * amplitude).real
    return field / amplitude.square().mean().sqrt()


class TinyNet(nn.Module):
    """Conv net with FiLM noise conditioning (Perez et al. 2018): 3x3 convs, width 24."""

    def __init__(self, width: int = 24, blocks: int = 3) -> None:
        super().__init__()
        self.width, self.blocks = width, blocks
        self.inp = nn.Conv2d(1, width, 3, padding=1)
        self.freqs = nn.Parameter(torch.randn(16), requires_grad=False)
        self.embed = nn.Sequential(nn.Linear(32, 64), nn.SiLU(), nn.Linear(64, 2 * width * blocks))
        self.convs = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1) for _ in range(blocks))
        self.out = nn.Conv2d(width, 1, 3, padding=1)

    def forward(self, x, c_noise, condition=None):
        phase = c_noise.view(-1, 1) * self.freqs  # (B, 16)
        film = self.embed(torch.cat([phase.cos(), phase.sin()], 1))  # (B, 2 D blocks)
        film = film.view(x.shape[0], self.blocks, 2, self.width, 1, 1)
        h = self.inp(x)  # (B, D, H, W)
        for i, conv in enumerate(self.convs):
            scale, shift = film[:, i, 0], film[:, i, 1]  # (B, D, 1, 1)
            h = h + conv(nn.functional.silu(h * (1 + scale) + shift))
        return self.out(nn.functional.silu(h))


def trained_problem(batch: int, seconds: float) -> Problem:
    torch.manual_seed(0)
    edm = EDMNoiseScheduler(sigma_data=1.0)
    model = EDMPreconditioner(TinyNet(), sigma_data=1.0)
    loss_fn = MSEDSMLoss(model, edm)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    start, steps, ema = time.perf_counter(), 0, None
    while time.perf_counter() - start < seconds:
        loss = loss_fn(smooth_fields(32))
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
    print(f"trained-edm: {steps} Adam steps in {seconds:.0f} s, DSM loss (EMA) {ema:.3f}")
    model.eval()

    def x0_hat(x, t):
        with torch.no_grad():
            return model(x, t)

    g = torch.Generator().manual_seed(5)
    xN = edm.sigma_max * torch.randn(batch, 1, 16, 16, generator=g)
    calibration = edm.sigma_max * torch.randn(batch, 1, 16, 16, generator=g)
    return Problem("trained-edm", edm, edm.get_denoiser(x0_predictor=x0_hat), xN, calibration,
                   edm.sigma_min)  # fmt: skip


# Measurement ---------------------------------------------------------------------------------


def relative_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x - ref).square().mean().sqrt() / ref.std()).item()


def run_fixed(p: Problem, solver: str, n: int, grid: torch.Tensor | None = None):
    f = Counted(p.denoiser)
    out = sample(f, p.xN, p.scheduler, n, solver=solver, time_steps=grid)
    return f.calls, out


def run_adaptive(p: Problem, tol: float):
    f = Counted(p.denoiser)
    solver = AdaptiveSolver(f, rtol=tol, atol=tol)
    grid = torch.tensor([p.t_max, p.t_min, 0.0])
    out = sample(f, p.xN, p.scheduler, 0, solver=solver, time_steps=grid)
    return f.calls, out


def first_meeting(settings, run: Callable, ref: torch.Tensor, targets: list[float]) -> dict:
    """NFE of the first setting (in order of growing cost) whose error meets each target."""
    found: dict[float, tuple[int, object, float]] = {}
    for setting in settings:
        nfe, out = run(setting)
        err = relative_error(out, ref)
        for target in targets:
            if target not in found and err <= target:
                found[target] = (nfe, setting, err)
        if len(found) == len(targets):
            break
    return found


def table(p: Problem, targets: list[float]) -> None:
    t0 = time.perf_counter()
    _, ref = run_fixed(p, "heun", 1000)
    rows: dict[str, dict] = {}
    for solver in FIXED:
        rows[solver] = first_meeting(
            STEPS, lambda n, solver=solver: run_fixed(p, solver, n), ref, targets
        )
    rows["adaptive (bosh3)"] = first_meeting(
        TOLERANCES, lambda tol: run_adaptive(p, tol), ref, targets
    )

    def optimized(n):
        grid = optimize_schedule(p.denoiser, p.calibration, p.t_max, p.t_min, num_steps=n)
        return run_fixed(p, "heun", 0, grid)

    rows["heun, optimized grid"] = first_meeting(STEPS, optimized, ref, targets)
    print(f"\n{p.name}: NFE to reach relative RMS error vs 1000-step Heun "
          f"({time.perf_counter() - t0:.0f} s)")  # fmt: skip
    print(f"{'solver':24s}" + "".join(f"{f'target {t:g}':>28s}" for t in targets))
    for name, found in rows.items():
        cells = []
        for target in targets:
            if target in found:
                nfe, setting, err = found[target]
                label = f"N={setting}" if isinstance(setting, int) else f"tol={setting:.1e}"
                cells.append(f"{nfe:5d} ({label}, {err:.1e})")
            else:
                cells.append(f"> {max(STEPS) * 2} (not reached)")
        print(f"{name:24s}" + "".join(f"{c:>28s}" for c in cells))
    heun, adaptive = rows["heun"], rows["adaptive (bosh3)"]
    for target in targets:
        if target in heun and target in adaptive:
            ratio = heun[target][0] / adaptive[target][0]
            print(f"  target {target:g}: Heun / adaptive NFE = {ratio:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=float, nargs="+", default=[1e-2, 1e-3])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--train-seconds", type=float, default=90.0)
    args = parser.parse_args()
    for p in [*gaussian_problems(args.batch), trained_problem(args.batch, args.train_seconds)]:
        table(p, sorted(args.targets, reverse=True))


if __name__ == "__main__":
    main()
