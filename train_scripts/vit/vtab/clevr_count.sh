#!/usr/bin/env bash
# GPS on VTAB-1k CLEVR object count.
# Every hyper-parameter is in configs/vtab/clevr_count.yaml.
# Dataset root: $VTAB_DIR (default data/vtab-1k).
# Arguments are passed on to train.py, e.g. --seed 1 or --protocol tune.
# NPROC, NNODES and RDZV_ENDPOINT select torchrun; see train_scripts/launch.sh.
set -euo pipefail
cd "$(dirname "$0")/../../.."
DATA_DIR="${VTAB_DIR:-data/vtab-1k}"
# shellcheck source=train_scripts/launch.sh
source train_scripts/launch.sh
launch_train configs/vtab/clevr_count.yaml "$DATA_DIR" "$@"
