#!/usr/bin/env bash
# The quickstart: embedded synthetic dataset -> 2-rank ZeRO training -> ensemble sampling.
# Run through `make quickstart` (which creates the venv first). Extra arguments are config
# overrides for the training run, e.g. `make quickstart ARGS="run.steps=500 zero.stage=3"`.
# HPCDIFF_WORKDIR (default: the repository) is where data/quickstart and runs/quickstart go.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${VENV:-.venv}
case $VENV in /*) ;; *) VENV=$ROOT/$VENV ;; esac
NPROC=${NPROC:-2}
cd "${HPCDIFF_WORKDIR:-$ROOT}"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

if [ ! -f data/quickstart/stats.json ]; then
    echo "== writing the embedded synthetic dataset to data/quickstart"
    "$VENV/bin/hpcdiff" data synth --out data/quickstart --shape 128 128 --times 48 --files 2
fi
echo "== training on $NPROC local ranks (torchrun, gloo on CPU / nccl on GPU)"
"$VENV/bin/torchrun" --standalone --nproc-per-node "$NPROC" -m hpcdiff train \
    --config "$ROOT/configs/quickstart.yaml" "$@"
echo "== sampling an ensemble for the first validation time"
"$VENV/bin/hpcdiff" sample runs/quickstart
echo "== evaluating the samples against the truth"
"$VENV/bin/hpcdiff" evaluate runs/quickstart
cat <<MSG
== done. Everything is in $PWD/runs/quickstart/:
   config.yaml            the resolved experiment config
   metrics.jsonl          loss, per-variable loss, validation loss, patches/s, memory per step
   checkpoints/step_*/    sharded ZeRO checkpoints (resume: rerun the same command)
   model.mdlus            consolidated EMA weights (hpcdiff.core.Module.from_checkpoint)
   samples/samples.nc     generated ensemble and truth (CF NetCDF, physical units)
   samples/*.png          truth / members / ensemble mean / std per variable
   eval/metrics.json      RMSE, CRPS, spread-skill, rank histograms, spectra, seam score
   eval/*.png             maps, spectra, rank histograms, loss curves
MSG
