#!/usr/bin/env bash
# Batch job template for multi-node GPU training; copy it and adapt the #SBATCH lines.
#
#   sbatch launchers/sbatch.sh train --config configs/dit_zero3.yaml
#
# Options given to sbatch override the lines below (e.g. `sbatch -N 4 launchers/sbatch.sh ...`).
# The job inherits the submitting shell's environment: activate the venv before submitting, or
# set HPCDIFF_PYTHON. With `checkpoint.resume: latest`, a requeued job continues where it stopped.
#SBATCH --job-name=hpcdiff
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
# Preemption and time limits (docs/preemption.md): Slurm sends SIGUSR2 to every rank 120 s
# before the time limit (it may come up to a minute earlier); hpcdiff stops after the current
# step, writes a checkpoint, requeues this job (`scontrol requeue`, run.requeue: auto) and the
# requeued job resumes from it. `USR2@120` signals the ranks directly; `B:USR2@120` would signal
# only the batch shell (here srun itself, which passes USR2 on). Give the save enough seconds.
# --requeue allows the requeue (also after a node failure); --open-mode=append keeps the output
# of earlier starts instead of truncating the file at each restart.
#SBATCH --signal=USR2@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=hpcdiff-%j.out
set -euo pipefail

PY=${HPCDIFF_PYTHON:-python}
if [ -n "${HPCDIFF_SCRIPT:-}" ]; then target=("$HPCDIFF_SCRIPT"); else target=(-m hpcdiff); fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
echo "hpcdiff: job $SLURM_JOB_ID, $SLURM_NTASKS tasks on $SLURM_JOB_NODELIST"
# One task per GPU; hpcdiff binds task i of a node to GPU (local rank % visible GPUs).
exec srun --kill-on-bad-exit=1 "$PY" "${target[@]}" "$@"
