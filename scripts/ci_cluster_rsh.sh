#!/usr/bin/env bash
# rsh-style agent for MPI launchers on the scripts/ci_cluster.sh nodes: `AGENT NODE COMMAND...`.
# Open MPI: --mca plm_rsh_agent scripts/ci_cluster_rsh.sh; MPICH (hydra): -launcher ssh
# -launcher-exec scripts/ci_cluster_rsh.sh. A real cluster uses ssh (or Slurm/PMIx) here.
exec "$(dirname "$(readlink -f "$0")")/ci_cluster.sh" rsh "$@"
