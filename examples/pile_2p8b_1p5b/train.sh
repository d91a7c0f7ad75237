#!/usr/bin/env bash
# One node's share of a pile_2p8b_1p5b run: builds the pretrain_salt.py command
# line for MODE and starts torchrun on this node's GPUs.
#
#   MODE=teacher   pretrain the 1.5B SLM teacher (a plain, baseline-mode run)
#   MODE=baseline  pretrain the 2.8B student without a teacher
#   MODE=salt      pretrain the 2.8B student with SALT (KD for the first KD_ITERS steps)
#   MODE=score     SALT_DS, step 1: the teacher scores DATA_PREFIX (tools/score_data.py)
#   MODE=salt_ds   SALT_DS, step 2: SALT with the KD phase on the selected data
#
# launch_slurm.sbatch runs this once per node (srun --ntasks-per-node=1). On a
# single 8-GPU machine it also runs on its own: NNODES=1 MODE=salt bash train.sh
#
#   PRINT_ARGS=1  print the pretrain_salt.py (MODE=score: score_data.py) arguments,
#                 NUL-separated, and exit
#                 (read by estimate_memory.py and tests/test_examples.py)
#   DRY_RUN=1     print the torchrun command this node would run, and exit
#
# Settings live in config.sh; every one of them is an environment variable.
set -euo pipefail

EXAMPLE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="${REPO_ROOT:-$(cd "$EXAMPLE_DIR/../.." && pwd)}"
# shellcheck source=config.sh
source "$EXAMPLE_DIR/config.sh"

MODE="${MODE:-salt}"
ENTRY="pretrain_salt.py"
case "$MODE" in
    teacher)
        RUN_NAME="teacher_1p5b"
        SAVE_DIR="$TEACHER_CKPT"
        WANDB_GROUP="$TEACHER_WANDB_GROUP"
        ARGS=("${TEACHER_MODEL_ARGS[@]}" "${TEACHER_PARALLEL_ARGS[@]}" "${TEACHER_LR_ARGS[@]}")
        ;;
    baseline)
        RUN_NAME="baseline_2p8b"
        SAVE_DIR="$CKPT_ROOT/$RUN_NAME"
        WANDB_GROUP="$STUDENT_WANDB_GROUP"
        ARGS=("${STUDENT_MODEL_ARGS[@]}" "${STUDENT_PARALLEL_ARGS[@]}" "${STUDENT_LR_ARGS[@]}")
        ;;
    salt)
        RUN_NAME="salt_2p8b_w${KD_ALPHA}_nkd${KD_ITERS}_${KD_SCHEDULE}"
        SAVE_DIR="$CKPT_ROOT/$RUN_NAME"
        WANDB_GROUP="$STUDENT_WANDB_GROUP"
        ARGS=(
            "${STUDENT_MODEL_ARGS[@]}" "${STUDENT_PARALLEL_ARGS[@]}" "${STUDENT_LR_ARGS[@]}"
            "${KD_ARGS[@]}"
        )
        ;;
    salt_ds)
        SELECTION_NAME="${KD_DATA_SELECTION//:/}"
        RUN_NAME="salt_ds_2p8b_w${KD_ALPHA}_nkd${KD_ITERS}_${KD_SCHEDULE}"
        RUN_NAME+="_${SCORE_UNIT}_${SELECTION_NAME}_by${KD_DATA_SELECTION_BY}"
        SAVE_DIR="$CKPT_ROOT/$RUN_NAME"
        WANDB_GROUP="$STUDENT_WANDB_GROUP"
        ARGS=(
            "${STUDENT_MODEL_ARGS[@]}" "${STUDENT_PARALLEL_ARGS[@]}" "${STUDENT_LR_ARGS[@]}"
            "${KD_ARGS[@]}" "${KD_DS_ARGS[@]}"
        )
        ;;
    score)
        # Resumable: finished chunks are kept in KD_DATA_PREFIX.salt_scores.partial/, so a
        # requeued job continues where it stopped, at any number of nodes.
        RUN_NAME="score_${SCORE_UNIT}"
        ENTRY="tools/score_data.py"
        ARGS=("${SCORE_ARGS[@]}")
        ;;
    *)
        echo "train.sh: MODE must be teacher, baseline, salt, score or salt_ds (got '$MODE')" >&2
        exit 2
        ;;
esac

if [[ "$MODE" != score ]]; then
    # --save and --load name the same directory: a requeued or restarted job resumes
    # from the newest checkpoint there (and a fresh one starts from scratch).
    ARGS+=(
        "${PRECISION_ARGS[@]}" "${TRAIN_ARGS[@]}" "${DATA_ARGS[@]}" "${LOG_ARGS[@]}"
        --save "$SAVE_DIR"
        --load "$SAVE_DIR"
        --wandb-exp-name "$RUN_NAME"
        --wandb-group "$WANDB_GROUP"
    )
fi

if [[ "${PRINT_ARGS:-0}" == 1 ]]; then
    printf '%s\0' "${ARGS[@]}"
    exit 0
fi

# --- distributed launch -----------------------------------------------------------------
MASTER_ADDR="${MASTER_ADDR:-localhost}"
MASTER_PORT="${MASTER_PORT:-29500}"
LOG_DIR="${LOG_DIR:-$REPO_ROOT/logs}"
RUN_LOG_DIR="$LOG_DIR/$RUN_NAME/${SLURM_JOB_ID:-local}"

# Megatron's TP/SP communication overlap relies on kernels being queued in order.
export CUDA_DEVICE_MAX_CONNECTIONS=1
# The teacher's memory is returned at KD_ITERS; expandable segments let the student
# reuse it instead of leaving a hole of fragmented blocks.
export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"
export TORCH_NCCL_ASYNC_ERROR_HANDLING=1
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-8}"
# NCCL on InfiniBand / RoCE clusters: set what your site documents, e.g.
# export NCCL_IB_HCA=mlx5_0,mlx5_1,mlx5_2,mlx5_3,mlx5_4,mlx5_5,mlx5_6,mlx5_7
# export NCCL_SOCKET_IFNAME=ib0        # interface for NCCL's bootstrap traffic
# export NCCL_IB_GID_INDEX=3           # RoCE only
# export NCCL_DEBUG=WARN               # INFO to see the chosen transports once
# export NCCL_NVLS_ENABLE=0            # if NVLink SHARP misbehaves on your fabric

LAUNCH=(
    torchrun
    --nnodes "$NNODES"
    --nproc_per_node "$GPUS_PER_NODE"
    --rdzv_id "${SLURM_JOB_ID:-$RUN_NAME}"
    --rdzv_backend c10d
    --rdzv_endpoint "$MASTER_ADDR:$MASTER_PORT"
    --max_restarts 0
    --log_dir "$RUN_LOG_DIR"
    --tee 3
    "$REPO_ROOT/$ENTRY"
    "${ARGS[@]}"
)

if [[ "${DRY_RUN:-0}" == 1 ]]; then
    printf '%q ' "${LAUNCH[@]}"
    echo
    exit 0
fi

if [[ -n "${VENV:-}" ]]; then
    # shellcheck disable=SC1091
    source "$VENV/bin/activate"
fi
mkdir -p "$RUN_LOG_DIR"
if [[ "$MODE" == score ]]; then
    echo "train.sh: MODE=score on $(hostname) (node ${SLURM_NODEID:-0} of $NNODES)," \
        "writing $KD_DATA_PREFIX.salt_scores.{npy,json}"
else
    mkdir -p "$SAVE_DIR"
    echo "train.sh: MODE=$MODE on $(hostname) (node ${SLURM_NODEID:-0} of $NNODES), saving to $SAVE_DIR"
fi
cd "$REPO_ROOT"
exec "${LAUNCH[@]}"
