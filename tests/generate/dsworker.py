"""Worker of the distributed sampling tests: every rank samples its tile of each case and saves
it (plus its initial noise) as ``<out>/<case>_r<rank>.pt``. Also builds the shared tiny model
and single-process references the test compares against."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from hpcdiff import nvtx
from hpcdiff.core import Module
from hpcdiff.diffusion.multi_diffusion import MultiDiffusionModel2D, MultiDiffusionPredictor
from hpcdiff.diffusion.noise_schedulers import EDMNoiseScheduler
from hpcdiff.diffusion.samplers import sample
from hpcdiff.generate.distributed import initial_latents, sample_tiled

SHAPE, CHANNELS, STEPS = (37, 29), 2, 3


class Net(Module):
    """Tiny backbone with a 3x3 receptive field and the positional embedding as input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(CHANNELS + 2, CHANNELS, 3, padding=1)

    def forward(self, x, t, condition=None):
        h = torch.cat([x, condition["positional_embedding"]], dim=1)
        return x / (1 + t[:, None, None, None] ** 2) + 0.3 * torch.tanh(self.conv(h))


def predictor(case: dict) -> MultiDiffusionPredictor:
    """The case's predictor on the global grid (same weights in every process)."""
    torch.manual_seed(0)
    md = MultiDiffusionModel2D(
        Net(),
        global_spatial_shape=SHAPE,
        positional_embedding="linear",
        channels_positional_embedding=2,
    )
    md.set_random_patching(patch_shape=tuple(case["patch"]), patch_num=1)
    pred = MultiDiffusionPredictor(md, chunk_size=case.get("chunk"))
    pred.set_patching(case["overlap"], case["boundary"], window=case["window"])
    return pred


def seeds_of(case: dict, group: int) -> list[int]:
    return [1000 * group + 7 * e + 3 for e in range(case.get("members", 2))]


def reference(case: dict, group: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_N, x_0) of single-process ``MultiDiffusionPredictor`` + ``sample()`` on the grid;
    for stochastic solvers, of ``sample_tiled`` on one tile covering the grid."""
    from hpcdiff.data.tiles import Tile
    from hpcdiff.distributed.domain import DomainMesh

    scheduler, seeds = EDMNoiseScheduler(), seeds_of(case, group)
    xN = initial_latents(scheduler, STEPS, seeds, CHANNELS, Tile.full(SHAPE))
    if "options" in case:
        mesh, pred = DomainMesh.single(SHAPE), predictor(case)
        x0 = sample_tiled(pred, mesh, scheduler, seeds, CHANNELS, STEPS, case["solver"],
                          case["options"])  # fmt: skip
        return xN, x0
    denoiser = scheduler.get_denoiser(x0_predictor=predictor(case))
    with torch.no_grad():
        return xN, sample(denoiser, xN, scheduler, STEPS, solver=case["solver"])


def main() -> None:
    from hpcdiff.distributed.domain import DomainMesh
    from hpcdiff.distributed.runtime import init_distributed, shutdown

    parser = argparse.ArgumentParser()
    parser.add_argument("--out")
    parser.add_argument("--cases", help="JSON list of cases")
    parser.add_argument("--generate", metavar="RUN", help="run `hpcdiff sample` on RUN instead")
    args, overrides = parser.parse_known_args()
    if args.generate:
        from hpcdiff.generate.sample import generate

        print(json.dumps(generate(args.generate, overrides)))
        return
    ctx = init_distributed()
    rank = ctx.env.rank
    for case in json.loads(args.cases):
        recorder = nvtx.enable("record")
        mesh = DomainMesh.from_process_group(case["grid"], SHAPE)
        scheduler = EDMNoiseScheduler()
        seeds = seeds_of(case, mesh.data_group)
        pred = predictor(case)
        x0 = sample_tiled(pred, mesh, scheduler, seeds, CHANNELS, STEPS, case["solver"],
                          case.get("options"))  # fmt: skip
        xN = initial_latents(scheduler, STEPS, seeds, CHANNELS, mesh.tile)
        nvtx.disable()
        ranges = sorted({name for _, name, _ in recorder.events})
        torch.save(
            {
                "ranges": ranges,
                "tile": [mesh.tile.row0, mesh.tile.row1, mesh.tile.col0, mesh.tile.col1],
                "group": mesh.data_group,
                "x0": x0,
                "xN": xN,
            },
            Path(args.out) / f"{case['name']}_r{rank}.pt",
        )
    shutdown()


if __name__ == "__main__":
    main()
