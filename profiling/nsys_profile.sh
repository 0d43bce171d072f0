#!/usr/bin/env bash
# Profile an hpcdiff command with Nsight Systems under torchrun, srun or mpirun, then summarize.
#
#   profiling/nsys_profile.sh torchrun|srun|mpirun NRANKS OUT -- HPCDIFF_ARGS...
#
#   torchrun  one nsys over the whole job: OUT.nsys-rep (ranks split by process in OUT.sqlite)
#   srun      one nsys per task: OUT_<SLURM_PROCID>.nsys-rep (srun -n NRANKS, --mpi=pmi2)
#   mpirun    one nsys per rank: OUT_<rank>.nsys-rep ($MPIRUN, default mpiexec; rank from
#             $RANK_VAR, default PMI_RANK for MPICH; use OMPI_COMM_WORLD_RANK for Open MPI)
#
# Then `nsys stats` writes OUT*.csv (nvtxsum) and OUT*.sqlite, and profiling/summarize.py prints
# one table per range. Pass `profiling.nvtx=true` (train) or set HPCDIFF_NVTX=1 (any command).
# Nsight Systems 2022.x (Debian bookworm) drops ranges of nvtx >= 0.2.12: the command then runs
# through profiling/nsys_compat (HPCDIFF_NSYS_COMPAT=1/0 forces it on/off).
# Extra nsys options: NSYS_OPTS (default "-t nvtx,osrt -s none --cpuctxsw=none").
set -euo pipefail

usage() { echo "usage: $0 torchrun|srun|mpirun NRANKS OUT -- HPCDIFF_ARGS..." >&2; exit 2; }
[ $# -ge 4 ] && [ "$4" = "--" ] || usage
LAUNCHER=$1 NRANKS=$2 OUT=$3
shift 4
HERE=$(cd "$(dirname "$0")" && pwd)
PYTHON=${PYTHON:-python}
read -r -a OPTS <<<"${NSYS_OPTS:--t nvtx,osrt -s none --cpuctxsw=none}"

compat=()
if [ "${HPCDIFF_NSYS_COMPAT:-}" = 1 ] || { [ -z "${HPCDIFF_NSYS_COMPAT:-}" ] \
        && nsys --version | grep -qE "version 20(1[0-9]|2[0-2])\."; }; then
    "$HERE/build_recorder.sh" >/dev/null  # build once, before the ranks start
    compat=("$HERE/nsys_compat")
fi

case "$LAUNCHER" in
    torchrun)
        nsys profile "${OPTS[@]}" -f true -o "$OUT" "${compat[@]}" \
            torchrun --standalone --nproc-per-node "$NRANKS" -m hpcdiff "$@" ;;
    srun)
        srun -n "$NRANKS" --mpi=pmi2 nsys profile "${OPTS[@]}" -f true \
            -o "${OUT}_%q{SLURM_PROCID}" "${compat[@]}" "$PYTHON" -m hpcdiff "$@" ;;
    mpirun)
        ${MPIRUN:-mpiexec} -n "$NRANKS" nsys profile "${OPTS[@]}" -f true \
            -o "${OUT}_%q{${RANK_VAR:-PMI_RANK}}" "${compat[@]}" "$PYTHON" -m hpcdiff "$@" ;;
    *) usage ;;
esac

csvs=()
for rep in "$OUT".nsys-rep "$OUT"_*.nsys-rep; do
    [ -f "$rep" ] || continue
    nsys stats -q --force-export true --report nvtxsum --format csv "$rep" >"${rep%.nsys-rep}.csv"
    csvs+=("${rep%.nsys-rep}.csv")
done
if [ "$LAUNCHER" = torchrun ]; then
    "$PYTHON" "$HERE/summarize.py" "$OUT.sqlite"  # one report, split per process
else
    "$PYTHON" "$HERE/summarize.py" "${csvs[@]}"   # one report per rank
fi
