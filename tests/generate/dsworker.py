"""Worker of the distributed sampling tests: every rank samples its tile of each case and saves
it (plus its initial noise and what the domain-decomposed scheduler gave it) as
``<out>/<case>_r<rank>.pt``. Also builds the shared tiny model, observations and the
single-process references the tests compare against.

A case: ``patch`` [Hp, Wp], ``overlap``, ``boundary``, ``window``, ``solver``, optional
``chunk`` (patch rows per model call), ``options`` (solver options), ``overlap_comm`` (False:
wait for the halo before any patch), ``dps`` (guided by observations split by tile),
``condition`` (a condition the model patches, given to the tiled predictor by tile), ``pe``
([kind, channels] of the positional embedding; default linear, 2),
``write`` (write the tiles into one NetCDF file), and ``grid`` (tile grid) when launched.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from hpcdiff import nvtx
from hpcdiff.core import Module
from hpcdiff.diffusion.multi_diffusion import (
    MultiDiffusionDataConsistencyDPSGuidance,
    MultiDiffusionDPSScorePredictor,
    MultiDiffusionModel2D,
    MultiDiffusionModelConsistencyDPSGuidance,
    MultiDiffusionPredictor,
)
from hpcdiff.diffusion.noise_schedulers import EDMNoiseScheduler
from hpcdiff.diffusion.samplers import sample
from hpcdiff.distributed.domain import DomainDecomposedNoiseScheduler, DomainMesh
from hpcdiff.generate.distributed import sample_tiled
from hpcdiff.generate.tiled import (
    TiledMultiDiffusionDPSScorePredictor,
    TiledMultiDiffusionPredictor,
)

SHAPE, CHANNELS, STEPS = (37, 29), 2, 3
VARIABLES = ["u10", "v10"]


class Net(Module):
    """Tiny backbone with a 3x3 receptive field; the positional embedding (and the condition,
    if any) as input."""

    def __init__(self, extra: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(CHANNELS + extra, CHANNELS, 3, padding=1)

    def forward(self, x, t, condition=None):
        h = torch.cat([x, *(condition[k] for k in sorted(condition.keys()))], dim=1)
        return x / (1 + t[:, None, None, None] ** 2) + 0.3 * torch.tanh(self.conv(h))


def global_fields(members: int) -> dict[str, torch.Tensor]:
    """Observations y, their mask and a condition on the global grid (same in every process)."""
    gen = torch.Generator().manual_seed(11)
    return {
        "y": torch.randn(members, CHANNELS, *SHAPE, generator=gen),
        "mask": torch.rand(members, CHANNELS, *SHAPE, generator=gen) > 0.6,
        "condition": torch.randn(members, 1, *SHAPE, generator=gen),
    }


def predictor(case: dict, condition: torch.Tensor | None = None) -> MultiDiffusionPredictor:
    """The case's predictor on the global grid (same weights in every process)."""
    torch.manual_seed(0)
    pe, pe_channels = case.get("pe", ("linear", 2))
    md = MultiDiffusionModel2D(
        Net(pe_channels + (1 if case.get("condition") else 0)),
        global_spatial_shape=SHAPE,
        positional_embedding=pe,
        channels_positional_embedding=pe_channels,
        condition_patch=True,
    )
    md.set_random_patching(patch_shape=tuple(case["patch"]), patch_num=1)
    pred = MultiDiffusionPredictor(md, condition=condition, chunk_size=case.get("chunk"))
    pred.set_patching(case["overlap"], case["boundary"], window=case["window"])
    return pred


def seeds_of(case: dict, group: int) -> list[int]:
    return [1000 * group + 7 * e + 3 for e in range(case.get("members", 2))]


def guidances(case: dict, pred, fields: dict, scheduler) -> list:
    """Data- and model-consistency DPS terms on ``fields`` (global or this rank's tile); the
    first keeps the graph for the second."""
    data = MultiDiffusionDataConsistencyDPSGuidance(
        pred, fields["mask"], fields["y"], std_y=0.5, gamma=0.1, sigma_fn=scheduler.sigma,
        retain_graph=True,
    )  # fmt: skip
    model = MultiDiffusionModelConsistencyDPSGuidance(
        pred,
        lambda x0: x0[:, :1],
        fields["y"][:, :1],
        std_y=torch.full_like(fields["y"][:, :1], 0.8),
    )
    return [data, model]


def latents(seeds: list[int], mesh: DomainMesh) -> torch.Tensor:
    scheduler = DomainDecomposedNoiseScheduler(EDMNoiseScheduler(), mesh, seeds)
    tN = scheduler.timesteps(STEPS)[0].expand(len(seeds))
    return scheduler.init_latents((CHANNELS, *SHAPE), tN)


@torch.no_grad()
def reference(case: dict, group: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_N, x_0) of single-process ``MultiDiffusionPredictor`` (or DPS score) + ``sample()``
    on the grid; for stochastic solvers, of ``sample_tiled`` on one tile covering the grid."""
    scheduler, seeds = EDMNoiseScheduler(), seeds_of(case, group)
    full = DomainMesh.single(SHAPE)
    xN = latents(seeds, full)
    fields = global_fields(len(seeds))
    pred = predictor(case, fields["condition"] if case.get("condition") else None)
    if "options" in case:
        return xN, sample_tiled(pred, full, scheduler, seeds, CHANNELS, STEPS, case["solver"],
                                case["options"])  # fmt: skip
    if case.get("dps"):
        score = MultiDiffusionDPSScorePredictor(
            pred, scheduler.x0_to_score, guidances(case, pred, fields, scheduler)
        )
        denoiser = scheduler.get_denoiser(score_predictor=score)
    else:
        denoiser = scheduler.get_denoiser(x0_predictor=pred)
    return xN, sample(denoiser, xN, scheduler, STEPS, solver=case["solver"])


def tiled_predictor(case: dict, mesh: DomainMesh, seeds: list[int], scheduler):
    """The case's tiled (maybe guided) predictor, fed only this rank's tiles of the fields."""
    rows, cols = mesh.tile.slices()
    fields = {k: v[..., rows, cols] for k, v in global_fields(len(seeds)).items()}
    condition = fields["condition"] if case.get("condition") else None
    tiled = TiledMultiDiffusionPredictor(
        predictor(case), mesh, overlap=case.get("overlap_comm", True), condition=condition
    )
    if not case.get("dps"):
        return tiled
    return TiledMultiDiffusionDPSScorePredictor(
        tiled, scheduler.x0_to_score, guidances(case, tiled, fields, scheduler)
    )


def scheduler_checks(mesh: DomainMesh, rank: int) -> dict:
    """What DomainDecomposedNoiseScheduler gives this rank when ranks' generators differ."""
    torch.manual_seed(100 + rank)
    scheduler = DomainDecomposedNoiseScheduler(EDMNoiseScheduler(), mesh, [5])
    t = scheduler.sample_time(6)
    x0 = torch.zeros(6, 1, *mesh.tile.shape)
    noise = scheduler.add_noise(x0, t) / t.view(-1, 1, 1, 1)  # sigma = t: the unit noise
    return {"sample_time": t, "noise": noise}


def write_output(case: dict, mesh: DomainMesh, rank: int, x0, xN, out: Path, inputs: str):
    """Write this rank's tiles of x0 (members g, g + G, ...) and, as the truth, of x_N into
    one samples file laid out after the test's CF input file."""
    from hpcdiff.data.reader import GridSource
    from hpcdiff.generate.output import SamplesFile

    source = GridSource([inputs], VARIABLES)
    members = range(mesh.data_group, 2 * mesh.data_groups, mesh.data_groups)
    file = SamplesFile(out / f"{case['name']}.nc", VARIABLES, source, SHAPE)
    file.write(rank, mesh.world, len(members) * mesh.data_groups, [1], x0.numpy()[:, None],
               xN[:1].numpy(), mesh.tile, members, truth_too=mesh.data_group == 0)  # fmt: skip


def main() -> None:
    from hpcdiff.distributed.runtime import init_distributed, shutdown

    parser = argparse.ArgumentParser()
    parser.add_argument("--out")
    parser.add_argument("--cases", help="JSON list of cases")
    parser.add_argument("--inputs", help="CF input file whose layout the written files copy")
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
        pred = tiled_predictor(case, mesh, seeds, scheduler)
        x0 = sample_tiled(pred, mesh, scheduler, seeds, CHANNELS, STEPS, case["solver"],
                          case.get("options"))  # fmt: skip
        nvtx.disable()
        saved = {
            "ranges": sorted({name for _, name, _ in recorder.events}),
            "tile": [mesh.tile.row0, mesh.tile.row1, mesh.tile.col0, mesh.tile.col1],
            "group": mesh.data_group,
            "x0": x0,
            "xN": latents(seeds, mesh),
            **scheduler_checks(mesh, rank),
        }
        torch.save(saved, Path(args.out) / f"{case['name']}_r{rank}.pt")
        if case.get("write"):
            write_output(case, mesh, rank, x0, saved["xN"], Path(args.out), args.inputs)
    shutdown()


if __name__ == "__main__":
    main()
