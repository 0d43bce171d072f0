"""Skill per cost of every solver on a trained run: CRPS, ensemble-mean RMSE and fine-scale power
ratio versus model evaluations (NFE) per sample, against the 35-NFE reference (18-step EDM
stochastic Heun, CorrDiff's default sampler).

Every setting samples the same ``--times`` validation times x ``--members`` members of the
run with ``hpcdiff sample``'s sampler (multi-diffusion over the whole grid, the run's
``sample`` patching) from the same initial noise and the same injected noise (common random
numbers), so differences between rows come from the solvers, not from the draw. To judge
what a CRPS difference means, the reference is also run with another noise seed: the
relative CRPS difference between the two seeds is the sampling noise of the CRPS estimate
itself (printed as "seed noise"), and per-time paired differences give a standard error.

Scores (:class:`hpcdiff.evaluate.scores.VariableScores`) are taken on the normalized fields
(every variable in units of its standard deviation) and averaged over variables:

* CRPS: the fair ensemble CRPS; RMSE: of the ensemble mean;
* fine-scale power ratio: member power / truth power summed over the upper half of the
  radial wavenumbers (1.0: the generated fields carry the truth's small-scale variance).

NFE per sample is the number of batched denoiser calls (all members go through together).
The knee is the fewest-NFE setting whose CRPS is within ``--tolerance`` (2 %) of the
reference.

    python benchmarks/bench_skill_per_cost.py runs/quickstart --times 4 --members 8
    python benchmarks/bench_skill_per_cost.py runs/quickstart --quick     # a few rows only
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tensordict import TensorDict

from hpcdiff.diffusion.multi_diffusion import MultiDiffusionPredictor
from hpcdiff.diffusion.samplers import make_solver, optimize_schedule, sample
from hpcdiff.distributed.domain import DomainDecomposedNoiseScheduler, DomainMesh
from hpcdiff.evaluate.scores import VariableScores
from hpcdiff.generate.distributed import BlockNoise
from hpcdiff.generate.tiled import TiledMultiDiffusionPredictor

REFERENCE = ("edm_stochastic_heun", {}, 18)
CHURN = {"S_churn": 40.0, "S_min": 0.05, "S_max": 50.0, "S_noise": 1.003}  # EDM paper, Table 5
# (label, solver, options, step counts or tolerances); adaptive runs one interval t_max -> t_min.
SETTINGS = [  # the likeliest knees first: rows are printed (and saved) as they finish
    ("dpmpp_2m", "dpmpp_2m", {}, [6, 8, 12, 18]),
    ("dpmpp_2m_unic", "dpmpp_2m_unic", {}, [6, 8, 12]),
    ("heun", "heun", {}, [4, 6, 8, 10, 13]),
    ("heun, optimized grid", "heun", {}, [6, 8]),
    ("adaptive (bosh3)", "adaptive", {}, [1e-1, 3e-2]),
    ("euler", "euler", {}, [12, 18]),
    ("exponential_euler", "exponential_euler", {}, [12, 18]),
    ("edm_stochastic_heun churn", "edm_stochastic_heun", CHURN, [18]),
]
QUICK = [("heun", "heun", {}, [6, 10]), ("dpmpp_2m", "dpmpp_2m", {}, [8, 12])]


class Counted:
    """Counts denoiser calls (one batched call over all members = one evaluation)."""

    def __init__(self, f) -> None:
        self.f, self.calls = f, 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.f(x, t)


@dataclasses.dataclass
class Case:
    """One validation time: its condition tile and normalized truth."""

    time: int
    condition: torch.Tensor | None
    truth: np.ndarray  # (C, H, W), NaN where masked


def load(run: Path, times: int):
    """(objective, config, validation cases) of a trained run."""
    from hpcdiff.data import DataStream
    from hpcdiff.data.stream import open_sources
    from hpcdiff.distributed import consolidate_checkpoint, find_latest
    from hpcdiff.experiment.build import DiffusionObjective
    from hpcdiff.experiment.conditioning import condition_of
    from hpcdiff.experiment.config import load_config

    cfg = load_config(run / "config.yaml", [])
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = find_latest(run / cfg.checkpoint.dir)
        path = consolidate_checkpoint(ckpt, Path(tmp) / "model.mdlus")
        objective = DiffusionObjective.from_checkpoint(path).train(False)
    data_cfg = dataclasses.replace(cfg.data, batch_size=1, prefetch=1, workers=0, mode="tile",
                                   tile_margin=0)  # fmt: skip
    sources = open_sources(data_cfg)
    mesh = DomainMesh((1, 1), sources["target"].shape, 0, 1)
    cases = []
    stream = DataStream(data_cfg, split="valid", tile=mesh.tile, sources=sources)
    with contextlib.closing(stream):
        for _, batch in zip(range(times), stream):
            truth = np.where(batch.mask[0].numpy(), batch.data[0].numpy(), np.nan)
            cases.append(Case(int(batch.time_index[0]), condition_of(batch), truth))
    return objective, cfg, mesh, cases


class Sampler:
    """``hpcdiff sample``'s sampler on one process for the run's patching."""

    def __init__(self, objective, cfg, mesh: DomainMesh, members: int) -> None:
        self.objective, self.cfg, self.mesh, self.members = objective, cfg, mesh, members
        self.scheduler = objective.scheduler
        self.dtype: torch.dtype | None = None  # autocast dtype of the model (None: fp32)

    def seeds(self, case: Case, seed: int) -> list[int]:
        return [(seed * 1_000_003 + case.time) * 1_000_003 + e for e in range(self.members)]

    def denoiser(self, case: Case):
        s, E = self.cfg.sample, self.members
        cond = case.condition
        if cond is not None:
            cond = TensorDict({"condition": cond.expand(E, -1, -1, -1)}, batch_size=[E])
        pred = MultiDiffusionPredictor(self.objective.model, chunk_size=s.chunk_size)
        pred.set_patching(s.overlap_pix, s.boundary_pix, window=s.window)
        tiled = TiledMultiDiffusionPredictor(pred, self.mesh, condition=cond)
        return self.scheduler.get_denoiser(x0_predictor=tiled)

    @torch.no_grad()
    def run(self, case: Case, solver: str, options: dict, steps, seed: int,
            grid: torch.Tensor | None = None) -> tuple[np.ndarray, int]:  # fmt: skip
        """Members (E, C, H, W) of ``case`` and the NFE per sample."""
        seeds = self.seeds(case, seed)
        tiles = DomainDecomposedNoiseScheduler(self.scheduler, self.mesh, seeds)
        f = Counted(self.denoiser(case))
        num_steps, opts = steps, dict(options)
        if solver == "adaptive":
            opts.update(rtol=steps, atol=steps)
            t_max, t_min = float(tiles.timesteps(2)[0]), float(self.scheduler.timesteps(18)[-2])
            grid, num_steps = torch.tensor([t_max, t_min, 0.0]), 2
        elif "S_churn" in opts:
            opts["num_steps"] = steps
        solver_ = make_solver(solver, f, self.scheduler, opts,
                              noise_fn=BlockNoise(seeds, self.mesh.tile))  # fmt: skip
        tN = (grid[0] if grid is not None else tiles.timesteps(num_steps)[0]).expand(len(seeds))
        xN = tiles.init_latents((case.truth.shape[0], *self.mesh.shape), tN)
        with torch.autocast("cpu", self.dtype, enabled=self.dtype is not None):
            x = sample(f, xN, tiles, num_steps, solver=solver_, time_steps=grid)
        return x.numpy(), f.calls

    def optimized_grid(self, case: Case, steps: int, seed: int) -> torch.Tensor:
        """``optimize_schedule`` grid calibrated on other noise (its NFE not counted)."""
        seeds = self.seeds(case, seed)[:2]
        tiles = DomainDecomposedNoiseScheduler(self.scheduler, self.mesh, seeds)
        grid18 = self.scheduler.timesteps(18)
        t_max, t_min = float(grid18[0]), float(grid18[-2])
        xN = tiles.init_latents((case.truth.shape[0], *self.mesh.shape),
                                torch.tensor(t_max).expand(2))  # fmt: skip
        saved, self.members = self.members, 2
        try:
            denoiser = self.denoiser(case)
        finally:
            self.members = saved
        return optimize_schedule(denoiser, xN, t_max, t_min, num_steps=steps, rtol=1e-2,
                                 atol=1e-2)  # fmt: skip


def fine_power_ratio(spectra: dict) -> float:
    k = np.asarray(spectra["wavenumber"])
    upper = k >= k.max() / 2
    return float(np.sum(np.asarray(spectra["members"])[upper])
                 / np.sum(np.asarray(spectra["truth"])[upper]))  # fmt: skip


def score(ens: list[np.ndarray], cases: list[Case], members: int) -> dict:
    """Mean over variables of CRPS, RMSE and fine-scale power ratio, and per-time CRPS."""
    C = cases[0].truth.shape[0]
    per_var = []
    for c in range(C):
        scores = VariableScores(members, None, np.random.default_rng(0))
        for x, case in zip(ens, cases):
            scores.update(x[:, c], case.truth[c], str(case.time))
        per_var.append(scores.result())
    per_time = np.mean([[row["crps"] for row in r["per_time"]] for r in per_var], axis=0)
    return {
        "crps": float(np.mean([r["crps"] for r in per_var])),
        "rmse": float(np.mean([r["rmse"] for r in per_var])),
        "power": float(np.mean([fine_power_ratio(r["spectra"]) for r in per_var])),
        "per_time_crps": per_time.tolist(),
    }


def run_setting(sampler: Sampler, cases, solver, options, steps, seed, grids=None) -> dict:
    t0 = time.perf_counter()
    ens, nfe = [], []
    for i, case in enumerate(cases):
        grid = None if grids is None else grids[i]
        x, calls = sampler.run(case, solver, options, steps, seed, grid)
        ens.append(x)
        nfe.append(calls)
    out = score(ens, cases, sampler.members)
    out.update(nfe=float(np.mean(nfe)), seconds=time.perf_counter() - t0)
    return out


def compare_precision(sampler: Sampler, cases: list[Case], args) -> None:
    """Skill of one setting in fp32 and under reduced-precision autocast (same noise), and the
    change."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.precision[0]]
    solver, steps = args.precision[1], int(args.precision[2])
    print(f"{'solver':>20} {'steps':>5} {'precision':>9} {'CRPS':>8} {'RMSE':>8} {'power':>6} "
          f"{'dCRPS%':>7} {'dRMSE%':>7} {'s':>5}")  # fmt: skip
    for name, n in ((solver, steps),):
        base = None
        for label, d in (("fp32", None), (args.precision[0], dtype)):
            sampler.dtype = d
            r = run_setting(sampler, cases, name, {}, n, args.seed)
            base = base or r
            dc, dr = r["crps"] / base["crps"] - 1, r["rmse"] / base["rmse"] - 1
            print(f"{name:>20} {n:>5} {label:>9} {r['crps']:8.4f} {r['rmse']:8.4f} "
                  f"{r['power']:6.3f} {100 * dc:7.2f} {100 * dr:7.2f} {r['seconds']:5.0f}",
                  flush=True)  # fmt: skip
    sampler.dtype = None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", type=Path, help="trained run directory (config.yaml, checkpoints/)")
    p.add_argument("--times", type=int, default=3, help="validation times")
    p.add_argument("--members", type=int, default=4, help="ensemble members per time")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.02,
        help="relative CRPS (and RMSE) tolerance of the knee",
    )
    p.add_argument(
        "--power-tolerance",
        type=float,
        default=0.1,
        help="slack on the fine-scale power ratio's distance from 1 (guarded knee)",
    )
    p.add_argument(
        "--summarize",
        type=Path,
        metavar="JSON",
        help="print the knees of rows saved with --json (no sampling)",
    )
    p.add_argument("--plot", type=Path, help="with --summarize: CRPS, power vs NFE (PNG)")
    p.add_argument("--quick", action="store_true", help="a few settings only")
    p.add_argument("--json", type=Path, help="also write the rows here")
    p.add_argument("--precision", nargs=3, metavar=("DTYPE", "SOLVER", "STEPS"),
                   help="instead: SOLVER at STEPS in fp32 and under DTYPE "
                   "(bf16) autocast, e.g. --precision bf16 dpmpp_2m 18")  # fmt: skip
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    if args.summarize:
        rows = json.loads(args.summarize.read_text())["rows"]
        markdown(rows)
        if args.plot:
            plot(rows, args.plot)
        return knees(rows, args.tolerance, args.power_tolerance)
    torch.set_num_threads(args.threads)
    run = args.run.resolve()
    os.chdir(run.parents[1])  # relative data paths in the config are from where training ran
    args.run = run
    objective, cfg, mesh, cases = load(args.run, args.times)
    sampler = Sampler(objective, cfg, mesh, args.members)
    params = sum(q.numel() for q in objective.model.parameters())
    shape, patch = tuple(mesh.shape), tuple(cfg.data.patch_shape)
    print(f"run {args.run}: {params:,} parameters, grid {shape}, patches {patch}, "
          f"{len(cases)} times x {args.members} members")  # fmt: skip
    if args.precision:
        return compare_precision(sampler, cases, args)
    solver, options, steps = REFERENCE
    ref = run_setting(sampler, cases, solver, options, steps, args.seed)
    other = run_setting(sampler, cases, solver, options, steps, args.seed + 1)
    seed_noise = abs(other["crps"] / ref["crps"] - 1)
    print(f"reference {solver} {steps} steps: NFE {ref['nfe']:.0f}, CRPS {ref['crps']:.4f} "
          f"RMSE {ref['rmse']:.4f} power {ref['power']:.3f} ({ref['seconds']:.0f} s); "
          f"seed noise of the CRPS: {100 * seed_noise:.1f} %")  # fmt: skip
    rows = [("reference " + solver, steps, ref)]
    print(f"{'solver':>28} {'steps':>6} {'NFE':>6} {'CRPS':>8} {'dCRPS%':>7} {'+-se%':>6} "
          f"{'RMSE':>8} {'power':>6} {'s':>5}")  # fmt: skip
    for label, solver, options, values in QUICK if args.quick else SETTINGS:
        for v in values:
            grids = None
            if label.endswith("optimized grid"):
                grids = [sampler.optimized_grid(c, v, args.seed + 7) for c in cases]
            r = run_setting(sampler, cases, solver, options, v, args.seed, grids)
            diff = np.asarray(r["per_time_crps"]) / np.asarray(ref["per_time_crps"]) - 1
            se = diff.std(ddof=1) / math.sqrt(len(diff)) if len(diff) > 1 else math.nan
            r["dcrps"], r["se"] = r["crps"] / ref["crps"] - 1, se
            rows.append((label, v, r))
            print(f"{label:>28} {v:>6g} {r['nfe']:6.1f} {r['crps']:8.4f} {100 * r['dcrps']:7.2f} "
                  f"{100 * se:6.2f} {r['rmse']:8.4f} {r['power']:6.3f} {r['seconds']:5.0f}",
                  flush=True)  # fmt: skip
            if args.json:
                table = {"seed_noise": seed_noise, "rows": [[lb, v, r] for lb, v, r in rows]}
                args.json.write_text(json.dumps(table, indent=1))
    knees(rows, args.tolerance, args.power_tolerance)


def plot(rows: list, path: Path) -> None:
    """CRPS and fine-scale power ratio (relative to the reference) against NFE per solver."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = rows[0][2]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    labels = list(dict.fromkeys(label for label, _, _ in rows[1:]))
    for label in labels:
        mine = sorted((r["nfe"], r) for lb, _, r in rows if lb == label)
        nfe = [n for n, _ in mine]
        axes[0].plot(nfe, [r["crps"] / ref["crps"] for _, r in mine], "o-", label=label)
        axes[1].plot(nfe, [r["power"] / ref["power"] for _, r in mine], "o-", label=label)
    for ax, name in zip(axes, ("CRPS", "fine-scale power ratio")):
        ax.axhline(1.0, color="k", lw=0.8)
        ax.axvline(ref["nfe"], color="k", ls=":", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("model evaluations per sample")
        ax.set_ylabel(f"{name} / reference")
    axes[0].axhspan(0.98, 1.02, color="0.9")
    axes[0].set_ylim(0.9, 1.3)
    axes[1].set_yscale("log")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def markdown(rows: list) -> None:
    """The rows as a Markdown table (docs/performance.md)."""
    ref = rows[0][2]
    print("| solver | steps / tol | NFE | CRPS | vs ref | RMSE | vs ref | fine-scale power |")
    print("|---|---|---|---|---|---|---|---|")
    for label, v, r in rows:
        dc, dr = r["crps"] / ref["crps"] - 1, r["rmse"] / ref["rmse"] - 1
        print(
            f"| {label} | {v:g} | {r['nfe']:.0f} | {r['crps']:.4f} | {100 * dc:+.1f} % | "
            f"{r['rmse']:.4f} | {100 * dr:+.1f} % | {r['power']:.2f} |"
        )


def knees(rows: list, tolerance: float, power_tolerance: float) -> None:
    """The fewest-NFE row (ties: lower CRPS) within ``tolerance`` CRPS of the reference
    (rows[0]), and the one that also keeps the ensemble-mean RMSE within ``tolerance`` and the
    fine-scale power ratio no further from 1 than the reference's, plus ``power_tolerance``."""
    ref = rows[0][2]

    def ok(r: dict, guarded: bool) -> bool:
        if r["crps"] > (1 + tolerance) * ref["crps"]:
            return False
        return not guarded or (
            r["rmse"] <= (1 + tolerance) * ref["rmse"]
            and abs(r["power"] - 1) <= (1 + power_tolerance) * abs(ref["power"] - 1)
        )

    for guarded, name in ((False, "CRPS only"), (True, "CRPS, RMSE and fine-scale power")):
        within = [row for row in rows[1:] if ok(row[2], guarded)]
        if not within:
            print(f"knee ({name}): no setting qualifies")
            continue
        label, v, r = min(within, key=lambda row: (row[2]["nfe"], row[2]["crps"]))
        print(f"knee ({name}): {label} at {v:g}: {r['nfe']:.0f} NFE, "
              f"{r['nfe'] / ref['nfe']:.2f} of the reference's {ref['nfe']:.0f}; CRPS "
              f"{100 * (r['crps'] / ref['crps'] - 1):+.2f} %, RMSE "
              f"{100 * (r['rmse'] / ref['rmse'] - 1):+.2f} %, power ratio {r['power']:.2f} "
              f"(reference {ref['power']:.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
