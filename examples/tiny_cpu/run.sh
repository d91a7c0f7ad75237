#!/usr/bin/env bash
# Tiny CPU SALT example. Usage: examples/tiny_cpu/run.sh MODE
#   MODE: teacher | baseline | salt | score | salt_ds | evaluate | report | all
#   LAYOUT=single|tp2|pp2 (default single) runs each training on 1 process or 2 gloo ranks.
#   RUN_NAME names the run directory of a single baseline/salt/salt_ds run (default: the mode),
#   so variants (KD_ALPHA, KD_ITERS, KD_SCHEDULE, KD_TEMPERATURE, SEED, ...) sit side by side.
# Needs the demo data (make demo builds it, or set DATA / TOKENIZER).
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=examples/tiny_cpu/config.sh
source examples/tiny_cpu/config.sh
PY=${PY:-python}
TIME_STAGE=examples/tiny_cpu/time_stage.sh

case "$LAYOUT" in
    single) NPROC=1; LAYOUT_ARGS=(); TEACHER_LAYOUT_ARGS=() ;;
    tp2) NPROC=2; LAYOUT_ARGS=(--tensor-model-parallel-size 2); TEACHER_LAYOUT_ARGS=() ;;
    pp2) NPROC=2; LAYOUT_ARGS=(--pipeline-model-parallel-size 2)
         TEACHER_LAYOUT_ARGS=(--kd-teacher-pipeline-model-parallel-size 2) ;;
    *) echo "run.sh: error: LAYOUT must be single, tp2 or pp2 (got $LAYOUT)" >&2; exit 2 ;;
esac

train() {  # train NAME ARGS... : one pretrain_salt.py run, resuming if it was interrupted
    local name=$1; shift
    local save="$RUNS/$name"
    if [[ -f "$save/done" ]]; then echo "== $name: done already ($save)"; return; fi
    echo "== $name"
    local launch=("$PY" pretrain_salt.py)
    if (( NPROC > 1 )); then
        launch=("$PY" -m torch.distributed.run --nproc_per_node "$NPROC" \
                --master_port "${MASTER_PORT:-29555}" pretrain_salt.py)
    fi
    OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( $(nproc) / NPROC ))} "$TIME_STAGE" "$name" \
        "${launch[@]}" "$@" "${DATA_ARGS[@]}" \
        --save "$save" --load "$save" --wandb-exp-name "$name"
    touch "$save/done"
}

teacher() {
    train teacher "${TEACHER_ARGS[@]}" "${TRAIN_ARGS[@]}" "${LAYOUT_ARGS[@]}" \
        --train-iters "$TEACHER_ITERS" --global-batch-size "$TEACHER_GLOBAL_BATCH"
}
student() {  # student NAME EXTRA_ARGS...
    local name=$1; shift
    train "$name" "${STUDENT_ARGS[@]}" "${TRAIN_ARGS[@]}" "${LAYOUT_ARGS[@]}" \
        --train-iters "$STUDENT_ITERS" --save-interval "$STUDENT_SAVE_INTERVAL" "$@"
}
score() {
    if [[ -f "$DATA.salt_scores.json" ]]; then echo "== score: done already"; return; fi
    echo "== score (SALT_DS: the teacher scores every ${SCORE_UNIT})"
    OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)} "$TIME_STAGE" score "$PY" tools/score_data.py \
        --load "$RUNS/teacher" --data-path "$DATA" "${SCORE_ARGS[@]}"
    "$PY" tools/select_data.py --data-path "$DATA" --kd-data-selection "$KD_SELECTION" \
        --kd-data-selection-by "$KD_SELECTION_BY"
}
evaluate() {  # few-shot: every saved checkpoint of the students (70% and 100% of the steps)
    if [[ ! -f "$EVAL_TASKS_DIR/tasks.json" ]]; then
        echo "== eval tasks (held-out documents of $DEMO_DIR/corpus)"
        "$TIME_STAGE" eval-tasks "$PY" tools/make_eval_tasks.py --corpus "$DEMO_DIR/corpus" --out "$EVAL_TASKS_DIR"
    fi
    local runs=()
    for name in $EVAL_RUNS; do runs+=("$RUNS/$name"); done
    echo "== evaluate (lm-eval, offline)"
    HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)} \
        "$TIME_STAGE" evaluate "$PY" tools/evaluate.py --load "${runs[@]}" --include-path "$EVAL_TASKS_DIR" "${EVAL_ARGS[@]}"
}
report() {
    mkdir -p "$DEMO_DIR/report"
    "$PY" tools/compare_runs.py "$RUNS/baseline" "$RUNS/salt" "$RUNS/salt_ds" \
        --baseline "$RUNS/baseline" --out "$DEMO_DIR/report/salt_vs_baseline" \
        --title "SALT vs baseline: tiny CPU demo" --stage-times "$STAGE_TIMES" \
        --count-teacher-cost "$RUNS/teacher" --scoring-cost "$DATA"
}

mode=${1:-all}
case "$mode" in
    teacher) teacher ;;
    baseline) student "${RUN_NAME:-baseline}" ;;
    salt) student "${RUN_NAME:-salt}" --kd-teacher-load "$RUNS/teacher" "${KD_ARGS[@]}" "${TEACHER_LAYOUT_ARGS[@]}" ;;
    score) score ;;
    salt_ds) student "${RUN_NAME:-salt_ds}" --kd-teacher-load "$RUNS/teacher" "${KD_ARGS[@]}" "${TEACHER_LAYOUT_ARGS[@]}" \
                 --kd-data-path "$DATA" --kd-data-selection "$KD_SELECTION" --kd-data-selection-by "$KD_SELECTION_BY" ;;
    evaluate) evaluate ;;
    report) report ;;
    all)
        mkdir -p "$(dirname "$STAGE_TIMES")"
        printf '# precision\t%s (examples/tiny_cpu/config.sh picks bf16 where the CPU has it)\n' \
            "$PRECISION" >> "$STAGE_TIMES"
        teacher
        score
        student baseline
        student salt --kd-teacher-load "$RUNS/teacher" "${KD_ARGS[@]}" "${TEACHER_LAYOUT_ARGS[@]}"
        student salt_ds --kd-teacher-load "$RUNS/teacher" "${KD_ARGS[@]}" "${TEACHER_LAYOUT_ARGS[@]}" \
            --kd-data-path "$DATA" --kd-data-selection "$KD_SELECTION" --kd-data-selection-by "$KD_SELECTION_BY"
        evaluate
        report ;;
    *) echo "run.sh: error: unknown MODE $mode (teacher|baseline|salt|score|salt_ds|evaluate|report|all)" >&2; exit 2 ;;
esac
