#!/usr/bin/env bash
# Run GPS on each of the 19 VTAB-1k tasks in sequence, each with its own config.
# Arguments are passed on to every task, e.g. --seed 1. A failing task stops the sequence
# unless KEEP_GOING=1, which runs the remaining tasks and lists the failed ones at the end.
set -euo pipefail
cd "$(dirname "$0")/../../.."
TASKS=(
  cifar100
  caltech101
  dtd
  flowers102
  pets
  svhn
  sun397
  patch_camelyon
  eurosat
  resisc45
  diabetic_retinopathy
  clevr_count
  clevr_dist
  dmlab
  kitti
  dsprites_loc
  dsprites_ori
  smallnorb_azi
  smallnorb_ele
)
# shellcheck source=train_scripts/launch.sh
source train_scripts/launch.sh
run_task_scripts train_scripts/vit/vtab "${TASKS[@]}" -- "$@"
