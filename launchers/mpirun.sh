#!/usr/bin/env bash
# Run hpcdiff under mpirun / mpiexec (Open MPI, MPICH, Intel MPI, MVAPICH).
#
#   NP=8 launchers/mpirun.sh train --config configs/dit_zero3.yaml
#
#   NP               number of ranks (default 1)
#   HPCDIFF_MPI      which MPI: openmpi, mpich or auto (default: the first mpirun on PATH). With
#                    openmpi or mpich the script finds that MPI's launcher on PATH (also under
#                    its Debian names mpirun.openmpi / mpirun.mpich, or mpiexec.hydra), whatever
#                    comes first on PATH (a venv's MPICH often shadows the system's Open MPI).
#   MPIRUN           launcher to use (a name or full path; wins over HPCDIFF_MPI)
#   MPIRUN_ARGS      extra launcher options, e.g. "--hostfile hosts --oversubscribe"
#   HPCDIFF_PYTHON   interpreter (default: python on PATH)
#   HPCDIFF_SCRIPT   run this Python file instead of `-m hpcdiff`
# hpcdiff reads the rank layout from the MPI's variables and gets rank 0's address by an MPI
# broadcast (mpi4py), so mpi4py must load the same MPI as the launcher: for Open MPI this
# script points MPI4PY_LIBMPI at Open MPI's libmpi.
#
# Signals (measured, docs/preemption.md): Open MPI's mpirun passes SIGUSR1/SIGUSR2 on to the
# ranks but answers SIGTERM/SIGINT by killing them 2 s later; MPICH's mpiexec passes SIGTERM/SIGINT
# on but dies of SIGUSR1/SIGUSR2 (killing the ranks). So this script runs the launcher as a child
# and relays what it gets in the form the launcher forwards: SIGUSR2 to Open MPI, SIGTERM to the
# others. hpcdiff stops after the current step on either (run.stop_signals) and saves.
set -euo pipefail

PY=${HPCDIFF_PYTHON:-python}
np=${NP:-1}

mpi_kind() {  # "Open MPI", "MPICH" or "unknown" from a launcher's --version
    local v
    v=$("$1" --version 2>&1 || true)
    case $v in
        *"Open MPI"*|*OpenRTE*) echo "Open MPI" ;;
        *HYDRA*|*MPICH*) echo "MPICH" ;;
        *"Intel(R) MPI"*) echo "Intel MPI" ;;
        *) echo unknown ;;
    esac
}
find_launcher() {  # the first launcher on PATH of MPI kind $1
    local name path
    for name in mpirun mpiexec mpirun.openmpi mpiexec.openmpi mpirun.mpich mpiexec.mpich \
                mpiexec.hydra; do
        while read -r path; do
            [ -n "$path" ] && [ "$(mpi_kind "$path")" = "$1" ] && { echo "$path"; return; }
        done < <(type -ap "$name" 2>/dev/null || true)
    done
}
if [ -z "${MPIRUN:-}" ]; then
    case ${HPCDIFF_MPI:-auto} in
        auto) MPIRUN=mpirun ;;
        openmpi|mpich)
            want=$([ "$HPCDIFF_MPI" = openmpi ] && echo "Open MPI" || echo MPICH)
            MPIRUN=$(find_launcher "$want")
            if [ -z "$MPIRUN" ]; then
                echo "launchers/mpirun.sh: error: HPCDIFF_MPI=$HPCDIFF_MPI: no $want launcher" \
                     "(mpirun, mpiexec, mpirun.$HPCDIFF_MPI) on PATH" >&2
                exit 2
            fi ;;
        *) echo "launchers/mpirun.sh: error: HPCDIFF_MPI=$HPCDIFF_MPI is not one of" \
                "openmpi, mpich, auto" >&2
           exit 2 ;;
    esac
fi
if ! command -v "$MPIRUN" >/dev/null 2>&1; then
    echo "launchers/mpirun.sh: error: MPI launcher '$MPIRUN' not found" >&2
    exit 2
fi
kind=$(mpi_kind "$MPIRUN")
echo "launchers/mpirun.sh: $kind, $(command -v "$MPIRUN"), $np ranks" \
     "(HPCDIFF_MPI=openmpi|mpich or MPIRUN=... to choose)" >&2
if [ -n "${HPCDIFF_SCRIPT:-}" ]; then target=("$HPCDIFF_SCRIPT"); else target=(-m hpcdiff); fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

args=(-n "$np")
relay=TERM
if [ "$kind" = "Open MPI" ]; then
    relay=USR2
    ompi_info=$(dirname "$(command -v "$MPIRUN")")/ompi_info
    [ -x "$ompi_info" ] || ompi_info=ompi_info
    libdir=$("$ompi_info" --path libdir --parsable 2>/dev/null | sed -n 's/^path:libdir://p' \
             || true)
    export MPI4PY_LIBMPI=${MPI4PY_LIBMPI:-${libdir:+$libdir/libmpi.so.40:}libmpi.so.40}
    [ "$(id -u)" = 0 ] && args+=(--allow-run-as-root)
    # Open MPI starts remote ranks with a bare environment: forward what hpcdiff needs.
    for var in PATH LD_LIBRARY_PATH PYTHONPATH VIRTUAL_ENV OMP_NUM_THREADS MPI4PY_LIBMPI \
               $(compgen -e | grep -E '^(HPCDIFF_|MASTER_|NCCL_|CUDA_VISIBLE_DEVICES$)' || true); do
        [ -n "${!var:-}" ] && args+=(-x "$var")
    done
fi
# shellcheck disable=SC2086  # MPIRUN_ARGS is a list of options
"$MPIRUN" "${args[@]}" ${MPIRUN_ARGS:-} "$PY" "${target[@]}" "$@" &
child=$!
for sig in TERM INT USR1 USR2; do
    # shellcheck disable=SC2064  # expand now: the child's pid and the relayed signal
    trap "kill -s $relay $child 2>/dev/null || true" "$sig"
done
while true; do  # `wait` returns early when a trapped signal arrives: wait again
    rc=0
    wait "$child" || rc=$?
    kill -0 "$child" 2>/dev/null || break
done
exit "$rc"
