"""Write the PhysicsNeMo 2.2.2 parity fixtures that tests/parity compares hpcdiff against.

Run once, by hand, with the REFERENCE installed in a throwaway venv (never in the project's
venv: the reference is not a dependency, and its pins would replace the project's):

    python3 -m venv /tmp/pnvenv
    /tmp/pnvenv/bin/pip install torch==2.13.0           # the local CPU wheel first
    /tmp/pnvenv/bin/pip install nvidia-physicsnemo==2.2.2
    /tmp/pnvenv/bin/python scripts/make_parity_fixtures.py tests/parity/fixtures

(nvidia-physicsnemo 2.2.2 pulls torchvision for timm; pip then moves that venv to the torch
build torchvision needs, 2.14.1 when these fixtures were made; the CPU kernels' float32
results agree with torch 2.13.0 to rounding, which the tests' tolerances allow.)

It writes, each a few KB:
* ``songunet.mdlus``, ``songunet_posembd.mdlus``, ``dit.mdlus``: tiny backbones with seeded
  random weights, saved by PhysicsNeMo's own ``Module.save``;
* ``models.pt``: their fixed inputs and PhysicsNeMo's outputs on them;
* ``diffusion.pt``: scheduler quantities (time grids, sigma, alpha and their rates, loss
  weights, ODE / SDE denoisers of a fixed x0-predictor, noised samples under a fixed seed)
  and sampler trajectories (every step of ``sample()`` with each solver).

Nothing here imports hpcdiff; the toy x0-predictor is restated in the tests.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

REFERENCE = "2.2.2"
UNET_ARGS = dict(img_resolution=[8, 12], in_channels=3, out_channels=2, label_dim=2,
                 model_channels=4, channel_mult=[1, 2], channel_mult_emb=1, num_blocks=1,
                 attn_resolutions=[4], dropout=0.0, embedding_type="positional",
                 channel_mult_noise=1, resample_filter=[1, 1])  # fmt: skip
POS_ARGS = dict(UNET_ARGS, in_channels=3 + 4, gridtype="sinusoidal", N_grid_channels=4)
DIT_ARGS = dict(input_size=(8, 8), in_channels=3, patch_size=(4, 4), hidden_size=16, depth=1,
                num_heads=2, condition_dim=3, attention_backend="timm")  # fmt: skip
SCHEDULERS = ("EDM", "VP", "VE", "IDDPM", "EDMLogUniform", "StudentTEDM")
SOLVERS = {
    "euler": {},
    "heun": {},
    "edm_stochastic_euler": {"S_churn": 10.0, "num_steps": 5},
    "edm_stochastic_heun": {"S_churn": 10.0, "num_steps": 5, "S_noise": 1.003},
}


def toy_x0(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x0 = 0.8 tanh(x) / (1 + t^2): smooth, nonlinear, the same in the tests."""
    return 0.8 * torch.tanh(x) / (1 + t.reshape(-1, *([1] * (x.ndim - 1))) ** 2)


def randomize_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter N(0, 0.2^2) from one seeded generator (not the trained init)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return model.eval()


def models(out: Path) -> dict:
    from physicsnemo.models.diffusion_unets import SongUNet, SongUNetPosEmbd
    from physicsnemo.models.dit import DiT

    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, 3, 8, 12, generator=gen)
    t, y = torch.rand(2, generator=gen) + 0.1, torch.randn(2, 2, generator=gen)
    xd, cond = torch.randn(2, 3, 8, 8, generator=gen), torch.randn(2, 3, generator=gen)
    built = {
        "songunet": (randomize_(SongUNet(**UNET_ARGS), 1), (x, t, y)),
        "songunet_posembd": (randomize_(SongUNetPosEmbd(**POS_ARGS), 2), (x, t, y)),
        "dit": (randomize_(DiT(**DIT_ARGS), 3), (xd, t, cond)),
    }
    record = {}
    with torch.no_grad():
        for name, (net, inputs) in built.items():
            net.save(str(out / f"{name}.mdlus"))
            record[name] = {"inputs": inputs, "output": net(*inputs)}
    return record


def scheduler_record(name: str) -> dict:
    import physicsnemo.diffusion.noise_schedulers as ns

    sch = getattr(ns, f"{name}NoiseScheduler")()
    grid = sch.timesteps(6)
    t = grid[:-1]  # the grid without its final 0
    x = torch.randn(len(t), 2, 3, 4, generator=torch.Generator().manual_seed(5))
    rec = {"timesteps": grid, "loss_weight": sch.loss_weight(t)}
    for fn in ("sigma", "alpha", "sigma_dot", "alpha_dot"):
        rec[fn] = getattr(sch, fn)(t)
    rec["sigma_inv"] = sch.sigma_inv(rec["sigma"])
    for kind in ("ode", "sde"):
        denoiser = sch.get_denoiser(x0_predictor=toy_x0, denoising_type=kind)
        rec[f"denoiser_{kind}"] = denoiser(x, t)
    torch.manual_seed(11)
    rec["add_noise"] = sch.add_noise(x, t)
    return rec


def diffusion() -> dict:
    from physicsnemo.diffusion.noise_schedulers import EDMNoiseScheduler, VPNoiseScheduler
    from physicsnemo.diffusion.samplers import sample

    record = {"schedulers": {name: scheduler_record(name) for name in SCHEDULERS}}
    xN = torch.randn(2, 2, 4, 6, generator=torch.Generator().manual_seed(13)) * 80
    trajectories = {}
    for label, sch, x in (("EDM", EDMNoiseScheduler(), xN), ("VP", VPNoiseScheduler(), xN / 80)):
        denoiser = sch.get_denoiser(x0_predictor=toy_x0)
        for solver, options in SOLVERS.items():
            torch.manual_seed(17)  # the stochastic solvers draw from the global generator
            states = sample(denoiser, x, sch, 5, solver=solver, solver_options=dict(options),
                            time_eval=list(range(5)))  # fmt: skip
            trajectories[f"{label}/{solver}"] = torch.stack(states)  # (N, B, C, H, W)
    record["trajectories"] = {"xN_scale": {"EDM": 1.0, "VP": 1 / 80}, "xN": xN,
                              "options": SOLVERS, **trajectories}  # fmt: skip
    return record


def save_atomically(obj: dict, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="fixture folder (tests/parity/fixtures)")
    args = parser.parse_args()
    try:
        import physicsnemo
    except ImportError:
        print("make_parity_fixtures: physicsnemo is not installed (see the docstring)",
              file=sys.stderr)  # fmt: skip
        return 2
    if physicsnemo.__version__ != REFERENCE:
        print(f"make_parity_fixtures: need physicsnemo {REFERENCE}, found "
              f"{physicsnemo.__version__}", file=sys.stderr)  # fmt: skip
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"physicsnemo": str(physicsnemo.__version__), "torch": str(torch.__version__)}
    save_atomically({"meta": meta, **models(args.out)}, args.out / "models.pt")
    save_atomically({"meta": meta, **diffusion()}, args.out / "diffusion.pt")
    print(f"fixtures written to {args.out} ({meta})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
