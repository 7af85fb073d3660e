#!/usr/bin/env bash
# Transfer demo on the bundled digits: train a tiny ViT from scratch on digits 0-4, then
# transfer it to digits 5-9 (20 training images per class) with linear probing, BitFit, GPS
# (K=1, 2, 4) and full fine-tuning, plus full training from scratch as a control. Each method's
# lr is chosen by gps.sweep on the validation split (tune protocol, seed 0), and the chosen lr is
# then run under the final protocol with seeds 0, 1 and 2. The script prints the source accuracy
# and the comparison table of gps.tables. See docs/TRANSFER.md for the results and their limits.
#
# Usage: bash train_scripts/transfer_demo.sh
# Environment:
#   OUTPUT       output folder (default: output/transfer_demo); a second call reuses finished
#                runs and resumes interrupted ones.
#   PYTHON       Python interpreter (default: python).
#   JOBS         processes run in parallel (default: 2, one per CPU core).
#   SEEDS        seeds of the final runs (default: 0,1,2).
#   OMP_NUM_THREADS  threads per process (default here: 1). On a two-core machine shared with
#                other work, a training step of this model with two threads took up to 25 times
#                as long as with one.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
OUTPUT=${OUTPUT:-output/transfer_demo}
JOBS=${JOBS:-2}
SEEDS=${SEEDS:-0,1,2}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

SOURCE_RUN="$OUTPUT/source/source/custom/seed0"
PRETRAINED="$OUTPUT/source.safetensors"
TARGET="$OUTPUT/target"
LOGS="$OUTPUT/logs"
mkdir -p "$LOGS"

_run_logged() {
  echo "+ $*" >&2
  "$@"
}

# One sweep per method on digits 5-9: lr on the validation split, then the final runs. Each
# entry: experiment name, lr grid, train.py options. Each grid brackets the lr that a wider
# grid chose on the validation split (see docs/TRANSFER.md).
SCRATCH_SWEEP="scratch 1e-3,3e-3,1e-2 --method full --pretrained none"
TRANSFER_SWEEPS=(
  "linear 1e-2,3e-2,1e-1 --method linear"
  "bitfit 3e-3,1e-2,3e-2 --method bitfit"
  "gps_k1 3e-3,1e-2,3e-2 --method gps --k 1"
  "gps_k2 3e-3,1e-2,3e-2 --method gps --k 2"
  "gps_k4 3e-3,1e-2,3e-2 --method gps --k 4"
  "full 3e-4,1e-3,3e-3 --method full"
)

run_sweep() {
  local name=$1 lrs=$2
  shift 2
  if ! _run_logged "$PYTHON" -m gps.sweep --config configs/transfer/target.yaml \
      --grid "lr=$lrs" --seeds 0 --final-seeds "$SEEDS" --output "$TARGET" \
      --experiment "$name" -- --pretrained "$PRETRAINED" "$@" > "$LOGS/$name.log" 2>&1; then
    echo "sweep $name failed; see $LOGS/$name.log" >&2
    touch "$LOGS/$name.failed"
  fi
}

# Start a sweep in the background once fewer than JOBS are running.
start_sweep() {
  local words
  read -r -a words <<< "$1"
  while (( $(jobs -rp | wc -l) >= JOBS )); do
    wait -n || true
  done
  run_sweep "${words[@]}" &
}

rm -f "$LOGS"/*.failed
# Stop the background sweeps when a step fails.
trap 'jobs -pr | xargs -r kill 2>/dev/null' EXIT

# Step 1: the control trained from scratch on digits 5-9 needs no source model, so it runs
# beside the source training when JOBS allows.
if (( JOBS > 1 )); then
  start_sweep "$SCRATCH_SWEEP"
fi

# Step 2: the source model (digits 0-4, trained from scratch), merged into a state dict.
if [[ ! -f "$SOURCE_RUN/results.json" ]]; then
  _run_logged "$PYTHON" train.py --config configs/transfer/source.yaml --output "$OUTPUT/source" \
    --resume auto > "$LOGS/source.log" 2>&1
fi
if [[ ! -f "$PRETRAINED" ]]; then
  _run_logged "$PYTHON" -m gps.checkpoint merge "$SOURCE_RUN" --out "$PRETRAINED" \
    >> "$LOGS/source.log" 2>&1
fi

# Step 3: the transfer sweeps.
if (( JOBS <= 1 )); then
  start_sweep "$SCRATCH_SWEEP"
fi
for entry in "${TRANSFER_SWEEPS[@]}"; do
  start_sweep "$entry"
done
wait
if compgen -G "$LOGS/*.failed" > /dev/null; then
  exit 1
fi

# Step 4: the tables.
echo "Source task (digits 0-4, trained from scratch):"
"$PYTHON" -m gps.tables "$OUTPUT/source" --table other 2>/dev/null
echo
echo "Target task (digits 5-9, 20 training images per class):"
"$PYTHON" -m gps.tables "$TARGET" --table other
