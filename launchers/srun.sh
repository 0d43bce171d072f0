#!/usr/bin/env bash
# Run hpcdiff as a Slurm job step: inside an allocation (salloc, sbatch) or on its own.
#
#   SRUN_ARGS="-N 2 --ntasks-per-node=4 --gpus-per-task=1" launchers/srun.sh train --config x.yaml
#
#   SRUN_ARGS        srun options (default: the allocation's layout)
#   HPCDIFF_PYTHON   interpreter (default: python on PATH)
#   HPCDIFF_SCRIPT   run this Python file instead of `-m hpcdiff`
# Ranks come from SLURM_PROCID / SLURM_STEP_NUM_TASKS / SLURM_LOCALID, rank 0's address from the
# step's node list; --kill-on-bad-exit ends the step as soon as one rank fails.
set -euo pipefail

PY=${HPCDIFF_PYTHON:-python}
if [ -n "${HPCDIFF_SCRIPT:-}" ]; then target=("$HPCDIFF_SCRIPT"); else target=(-m hpcdiff); fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
# shellcheck disable=SC2086  # SRUN_ARGS is a list of options
exec srun --kill-on-bad-exit=1 ${SRUN_ARGS:-} "$PY" "${target[@]}" "$@"
