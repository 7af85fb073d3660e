#!/usr/bin/env bash
# Run GPS on each of the 5 FGVC tasks in sequence, each with its own config.
# Arguments are passed on to every task, e.g. --seed 1. A failing task stops the sequence
# unless KEEP_GOING=1, which runs the remaining tasks and lists the failed ones at the end.
set -euo pipefail
cd "$(dirname "$0")/../../.."
TASKS=(
  cub_2011
  nabirds
  oxford_flowers
  stanford_dogs
  stanford_cars
)
# shellcheck source=train_scripts/launch.sh
source train_scripts/launch.sh
run_task_scripts train_scripts/vit/fgvc "${TASKS[@]}" -- "$@"
