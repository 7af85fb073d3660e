# shellcheck shell=bash
# Shared launcher, sourced by the task scripts under train_scripts/vit/. It defines:
#
#   launch_train CONFIG DATA_DIR [train.py options...]
#       Run train.py with CONFIG and --data-dir DATA_DIR, from the repository root.
#   run_task_scripts SCRIPT_DIR TASK... -- [train.py options...]
#       Run SCRIPT_DIR/TASK.sh for each TASK in sequence (used by the all.sh scripts).
#
# Environment:
#   PYTHON         Python interpreter for single-process runs (default: python).
#   NPROC          processes per node. Unset or 1: one plain `python train.py` process.
#                  Above 1: `torchrun --nproc_per_node NPROC train.py ...`.
#   NNODES         number of nodes for torchrun (default: 1).
#   RDZV_ENDPOINT  host:port of the c10d rendezvous, required when NNODES > 1.
#                  Without it a single-node run uses `torchrun --standalone`.
#   RDZV_ID        rendezvous job id shared by all nodes (default: gps).
#   KEEP_GOING     1: run_task_scripts continues past a failing task (default: 0, stop).

# Echo the command line to stderr, then run it.
_run_logged() {
  echo "+ $*" >&2
  "$@"
}

launch_train() {
  if (( $# < 2 )); then
    echo "launch_train: usage: launch_train CONFIG DATA_DIR [train.py options...]" >&2
    return 2
  fi
  local config=$1 data_dir=$2
  shift 2
  local nproc=${NPROC:-1} nnodes=${NNODES:-1}
  if [[ ! $nproc =~ ^[1-9][0-9]*$ ]]; then
    echo "NPROC must be a positive integer (processes per node), got '$nproc'" >&2
    return 2
  fi
  if [[ ! $nnodes =~ ^[1-9][0-9]*$ ]]; then
    echo "NNODES must be a positive integer (number of nodes), got '$nnodes'" >&2
    return 2
  fi

  if (( nproc == 1 && nnodes == 1 )); then
    _run_logged "${PYTHON:-python}" train.py --config "$config" --data-dir "$data_dir" "$@"
    return
  fi

  # torchrun starts NPROC x NNODES copies of train.py, which join one process group from the
  # torchrun environment variables. --batch-size stays per process.
  local rendezvous=()
  if [[ -n ${RDZV_ENDPOINT:-} ]]; then
    rendezvous=(--rdzv_backend c10d --rdzv_endpoint "$RDZV_ENDPOINT" --rdzv_id "${RDZV_ID:-gps}")
  elif (( nnodes > 1 )); then
    echo "NNODES=$nnodes requires RDZV_ENDPOINT=host:port, the same on every node" >&2
    return 2
  else
    rendezvous=(--standalone)
  fi
  _run_logged torchrun --nnodes "$nnodes" --nproc_per_node "$nproc" "${rendezvous[@]}" \
    train.py --config "$config" --data-dir "$data_dir" "$@"
}

run_task_scripts() {
  if (( $# < 1 )); then
    echo "run_task_scripts: usage: run_task_scripts SCRIPT_DIR TASK... -- [options...]" >&2
    return 2
  fi
  local script_dir=$1
  shift
  local tasks=()
  while (( $# > 0 )) && [[ $1 != "--" ]]; do
    tasks+=("$1")
    shift
  done
  if (( $# > 0 )); then
    shift  # the "--" separating the tasks from the train.py options
  fi

  local failed=() task status
  for task in "${tasks[@]}"; do
    echo "=== $task: bash $script_dir/$task.sh $*" >&2
    status=0
    bash "$script_dir/$task.sh" "$@" || status=$?
    if (( status == 0 )); then
      continue
    fi
    failed+=("$task")
    echo "=== $task failed with exit status $status" >&2
    if [[ ${KEEP_GOING:-0} != 1 ]]; then
      echo "stopped after $task failed. Set KEEP_GOING=1 to run the remaining tasks." >&2
      return "$status"
    fi
  done

  if (( ${#failed[@]} > 0 )); then
    echo "failed tasks (${#failed[@]} of ${#tasks[@]}): ${failed[*]}" >&2
    return 1
  fi
  echo "all ${#tasks[@]} tasks finished" >&2
}
