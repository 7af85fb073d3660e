#!/usr/bin/env bash
# GPS on FGVC Stanford Cars.
# Every hyper-parameter is in configs/fgvc/cars.yaml.
# Dataset root: $FGVC_DIR (default data/fgvc).
# Arguments are passed on to train.py, e.g. --seed 1 or --protocol tune.
# NPROC, NNODES and RDZV_ENDPOINT select torchrun; see train_scripts/launch.sh.
set -euo pipefail
cd "$(dirname "$0")/../../.."
DATA_DIR="${FGVC_DIR:-data/fgvc}"
# shellcheck source=train_scripts/launch.sh
source train_scripts/launch.sh
launch_train configs/fgvc/cars.yaml "$DATA_DIR" "$@"
