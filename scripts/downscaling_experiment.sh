#!/usr/bin/env bash
# The downscaling experiment of docs/downscaling.md: interpolation, regression only, plain
# diffusion and residual diffusion on the embedded synthetic data (the quickstart's 128 x 128,
# 8x coarse condition), each trained for the same number of optimizer steps on one CPU rank,
# sampled with the same settings and scored by `hpcdiff evaluate` (which adds the
# interpolation baselines). Usage:
#   scripts/downscaling_experiment.sh [WORKDIR] [STEPS] -- [sample overrides]
# e.g. scripts/downscaling_experiment.sh /tmp/exp 1000 -- sample.num_steps=32
# Set SKIP_TRAIN=1 to re-sample and re-evaluate existing runs only.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
WORK=${1:-$ROOT/experiments/downscaling}
STEPS=${2:-1000}
shift $(( $# >= 2 ? 2 : $# ))
[ "${1:-}" = "--" ] && shift
SAMPLE=("sample.ensemble=8" "sample.times=8" "$@")
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$WORK" && cd "$WORK"
H=("$VENV/bin/hpcdiff")

if [ ! -f data/quickstart/stats.json ]; then
    "${H[@]}" data synth --out data/quickstart --shape 128 128 --times 48 --files 2
fi
train() {  # name, overrides...; the log in runs/<name>.train.log
    local name=$1; shift
    if [ -z "${SKIP_TRAIN:-}" ]; then
        mkdir -p runs
        echo "training $name ($STEPS steps), log in $WORK/runs/$name.train.log"
        if ! "${H[@]}" train --config "$ROOT/configs/quickstart.yaml" run.name="$name" \
            run.out_dir=runs run.steps="$STEPS" run.progress=never "$@" \
            > "runs/$name.train.log" 2>&1; then
            echo "training $name failed; the end of runs/$name.train.log:" >&2
            tail -n 5 "runs/$name.train.log" >&2
            return 1
        fi
    fi
}
# regression and plain diffusion side by side (one core each), then the residual run
train regression objective.kind=regression &
regression=$!
train plain
wait "$regression"
train residual objective.regression_run=runs/regression
for run in regression plain residual; do
    "${H[@]}" sample "runs/$run" "${SAMPLE[@]}" > "runs/$run/sample.log"
    "${H[@]}" evaluate "runs/$run" | tee "runs/$run/eval.txt"
done
"$VENV/bin/python" "$ROOT/scripts/downscaling_summary.py" runs/regression runs/plain \
    runs/residual --out summary
