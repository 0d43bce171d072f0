"""``hpcdiff train``: run an experiment config under any launcher (or none)."""

from __future__ import annotations

import argparse

from hpcdiff.cli import EXIT_OK, EXIT_STOPPED

EXAMPLES = """examples:
  # one process
  hpcdiff train --config configs/quickstart.yaml
  # 2 local ranks, ZeRO-3, shorter run (dotted KEY=VALUE overrides, values parsed as YAML)
  torchrun --nproc-per-node 2 -m hpcdiff train --config configs/quickstart.yaml \\
      zero.stage=3 run.steps=50
  # print the resolved config, parameter counts and ZeRO memory estimate, then exit
  hpcdiff train --config configs/quickstart.yaml --dry-run
  # Slurm and MPI: the same arguments after the launcher script (docs/launching.md)
  NP=4 launchers/mpirun.sh train --config configs/dit_zero3.yaml

Rerunning the same command resumes from the newest verified checkpoint
(checkpoint.resume: latest); a run that already reached run.steps trains nothing and says so
in one line (exit code 0). model.init_from=FILE.mdlus starts a new run from the weights of a
.mdlus file (hpcdiff's or PhysicsNeMo's). Exit code 2: invalid config or input data (nothing
was run); 4: a checkpoint could not be written (the previous one is intact); 75: stopped by one
of run.stop_signals (SIGTERM, SIGUSR2) after a checkpoint, the Slurm job requeued
(run.requeue) or the resume command printed (docs/preemption.md).
"""


def _run(args: argparse.Namespace) -> int:
    from hpcdiff.distributed.preempt import TrainingStopped, install_stop_signals
    from hpcdiff.experiment.config import load_config

    cfg = load_config(args.config, args.overrides)  # before the heavy imports below
    # Exactly run.stop_signals from here; one that came during start-up stops after step 1.
    install_stop_signals(cfg.run.stop_signals, exactly=True)
    from hpcdiff.train.loop import train

    try:
        train(cfg, dry_run=args.dry_run)
    except TrainingStopped:  # the checkpoint is written and the message printed
        return EXIT_STOPPED
    return EXIT_OK


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a patch-based diffusion model",
        description="Train (or resume) the experiment described by a YAML config: random "
        "patches of whole-domain NetCDF samples, DeepSpeed ZeRO 0-3, EMA, sharded checkpoints "
        "and metrics in <run.out_dir>/<run.name>/.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", required=True, help="experiment YAML (see configs/)")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="open the data, build the model, print config, parameter counts and ZeRO memory; "
        "train nothing, write nothing",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted config overrides, e.g. optim.lr=1e-4 (docs/configs.md lists every key)",
    )
    p.set_defaults(func=_run)
