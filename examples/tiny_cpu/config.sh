#!/usr/bin/env bash
# The tiny CPU example: a ~2.6M-parameter student and a ~0.9M-parameter SLM teacher on the
# embedded demo corpus (make demo builds it). Sized to finish in 15 min on 2 fp32-only (AVX2)
# cores.
# Sourced by run.sh and by benchmarks; every setting can be overridden from the environment.
# shellcheck disable=SC2034  # arrays are used by the scripts that source this file

DEMO_DIR=${DEMO_DIR:-demo_out}
DATA=${DATA:-$DEMO_DIR/data/demo_text_document}
TOKENIZER=${TOKENIZER:-$DEMO_DIR/tokenizer/spm.model}
RUNS=${RUNS:-$DEMO_DIR/runs}
# Wall-clock per stage (time_stage.sh appends to it; the report shows it with the machine).
export STAGE_TIMES=${STAGE_TIMES:-$DEMO_DIR/stage_times.tsv}

# Where the processes go: single (one process), tp2 or pp2 (two gloo ranks via torchrun).
LAYOUT=${LAYOUT:-single}

STUDENT_ITERS=${STUDENT_ITERS:-160}
# The teacher sees twice the students' tokens (160 steps of 16 x 256) and ends *stronger* than
# the baseline student. In the paper's regime (a teacher that ends worse: here half the
# students' tokens) SALT did not help reliably at this scale: BENCHMARKS.md, "SALT in the
# paper's regime", has both seeds. TEACHER_ITERS=80 TEACHER_GLOBAL_BATCH=8 gives that regime.
TEACHER_ITERS=${TEACHER_ITERS:-$STUDENT_ITERS}
TEACHER_GLOBAL_BATCH=${TEACHER_GLOBAL_BATCH:-16}
KD_ITERS=${KD_ITERS:-48}             # n_KD: the first 30% of the student's steps
# Students also keep a checkpoint at 70% of their steps: the paper's few-shot comparison point.
STUDENT_SAVE_INTERVAL=${STUDENT_SAVE_INTERVAL:-$(( STUDENT_ITERS * 7 / 10 ))}

# bf16 (fp32 master weights) where the CPU multiplies bf16 in hardware (AMX or AVX512-BF16:
# ~1.6x faster steps on the 2-core Xeon the demo is sized for), fp32 elsewhere.
if [[ -z "${PRECISION:-}" ]]; then
    PRECISION=fp32
    if grep -qw -e amx_bf16 -e avx512_bf16 /proc/cpuinfo 2>/dev/null; then PRECISION=bf16; fi
fi
PRECISION_ARGS=()
if [[ "$PRECISION" == bf16 ]]; then PRECISION_ARGS=(--bf16); fi

STUDENT_ARGS=(
    --num-layers 4 --hidden-size 192 --num-attention-heads 4 --ffn-hidden-size 768
)
TEACHER_ARGS=(
    --num-layers 2 --hidden-size 128 --num-attention-heads 4 --ffn-hidden-size 512
)
# shellcheck disable=SC2054  # "98,2,0" is one value (--split), not separators
TRAIN_ARGS=(
    --seq-length 256 --micro-batch-size "${MICRO_BATCH:-8}" --global-batch-size "${GLOBAL_BATCH:-8}"
    --lr 3e-3 --min-lr 3e-4 --lr-decay-style cosine --lr-warmup-iters 20
    --weight-decay 0.1 --adam-beta2 0.95 --clip-grad 1.0
    --hidden-dropout 0.0 --attention-dropout 0.0
    --split 98,2,0 --seed "${SEED:-1234}" "${PRECISION_ARGS[@]}"
    --log-interval 10 --eval-interval 20 --eval-iters 4
)
DATA_ARGS=(
    --data-path "$DATA"
    --tokenizer-type SentencePieceTokenizer --tokenizer-model "$TOKENIZER"
)
# SALT (paper defaults where it is silent: w=0.5, T=1, full vocabulary, hard switch).
KD_ARGS=(
    --kd-alpha "${KD_ALPHA:-0.5}" --kd-temperature "${KD_TEMPERATURE:-1.0}"
    --kd-schedule "${KD_SCHEDULE:-constant}" --kd-iters "$KD_ITERS"
)
KD_SELECTION=${KD_SELECTION:-top:0.5}
# SALT_DS's unit (window: each --seq-length training window scored on its own, as the paper
# ranks sequences; or document) and whether the rule applies globally or within each Pile
# subset. Window scores within each subset did least harm at both seeds (BENCHMARKS.md).
SCORE_UNIT=${SCORE_UNIT:-window}
KD_SELECTION_BY=${KD_SELECTION_BY:-subset}
# Few-shot evaluation (tools/evaluate.py) of the students' saved checkpoints on the offline
# tasks that tools/make_eval_tasks.py builds from held-out documents (docs/evaluation.md).
EVAL_TASKS_DIR=${EVAL_TASKS_DIR:-$DEMO_DIR/eval_tasks}
EVAL_RUNS=${EVAL_RUNS:-baseline salt salt_ds}
EVAL_ARGS=(
    --tasks "${EVAL_TASKS:-salt_lastword,salt_nextline}" --num-fewshot "${EVAL_FEWSHOT:-1}"
    --limit "${EVAL_LIMIT:-50}" --batch-size 16 --iterations all
)
# Small work units: a progress line (tokens/s, ETA) every few seconds, cheap resumes.
SCORE_ARGS=(--score-unit "$SCORE_UNIT" --score-top-k 10 --score-statistic median --score-micro-batch-size 16 --chunk-documents 64
            "${PRECISION_ARGS[@]}")
