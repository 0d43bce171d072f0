#!/usr/bin/env bash
# Run hpcdiff with torchrun: one process per GPU of this node (or NPROC_PER_NODE processes).
#
#   launchers/torchrun.sh train --config configs/quickstart.yaml
#
# Multi-node: run this script once on every node with the same NNODES, MASTER_ADDR, MASTER_PORT
# and each node's NODE_RANK (0 .. NNODES-1).
#   NPROC_PER_NODE   processes on this node (default: visible GPUs, or 1 without GPUs)
#   NNODES           number of nodes (default 1: standalone rendezvous on a free local port)
#   NODE_RANK, MASTER_ADDR, MASTER_PORT (default 29500)   multi-node rendezvous
#   HPCDIFF_PYTHON   interpreter (default: python on PATH)
#   HPCDIFF_SCRIPT   run this Python file instead of `-m hpcdiff`
#   SHUTDOWN_TIMEOUT seconds the ranks get to stop after a signal before SIGKILL (default 120)
# torchrun forwards only SIGTERM, SIGINT, SIGHUP and SIGQUIT to the ranks by default; this script
# adds SIGUSR1 and SIGUSR2 (the signal `#SBATCH --signal=USR2@...` sends; hpcdiff stops
# gracefully on run.stop_signals: docs/preemption.md).
set -euo pipefail

gpu_count() {
    if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
        tr ',' '\n' <<<"$CUDA_VISIBLE_DEVICES" | grep -c .
    elif command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true
    else
        echo 0
    fi
}

PY=${HPCDIFF_PYTHON:-python}
gpus=$(gpu_count)
nproc=${NPROC_PER_NODE:-$([ "$gpus" -gt 0 ] && echo "$gpus" || echo 1)}
nnodes=${NNODES:-1}
cores=$(nproc)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( cores / nproc > 0 ? cores / nproc : 1 ))}

args=(--nproc-per-node "$nproc" --nnodes "$nnodes"
      --signals-to-handle SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1,SIGUSR2
      --shutdown-timeout "${SHUTDOWN_TIMEOUT:-120}")
if [ "$nnodes" = 1 ]; then
    args+=(--standalone)
else
    : "${NODE_RANK:?set NODE_RANK (0..NNODES-1) on every node}"
    : "${MASTER_ADDR:?set MASTER_ADDR to the host of node 0}"
    args+=(--node-rank "$NODE_RANK" --rdzv-backend c10d
           --rdzv-endpoint "$MASTER_ADDR:${MASTER_PORT:-29500}" --rdzv-id "${RDZV_ID:-hpcdiff}")
fi
if [ -n "${HPCDIFF_SCRIPT:-}" ]; then target=("$HPCDIFF_SCRIPT"); else target=(-m hpcdiff); fi
exec "$PY" -m torch.distributed.run "${args[@]}" "${target[@]}" "$@"
