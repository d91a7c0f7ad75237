# shellcheck shell=bash disable=SC2034  # the arrays are used by train.sh, which sources this
# Settings of the pile_2p8b_1p5b example as bash arrays of pretrain_salt.py flags.
#
# Sourced by train.sh. estimate_memory.py and tests/test_examples.py read the
# command lines train.sh builds from these arrays (PRINT_ARGS=1), so the memory
# table and the flag checks always describe exactly what a launch runs.
#
# Every knob below is an environment variable with a default: override it at
# submission time, e.g. `NNODES=16 MBS=2 MODE=salt sbatch launch_slurm.sbatch`.

# --- cluster shape ------------------------------------------------------------
NNODES="${NNODES:-${SLURM_NNODES:-8}}"
GPUS_PER_NODE="${GPUS_PER_NODE:-8}"

# --- paths (a filesystem every node sees) --------------------------------------
# tools/preprocess_pile.py output: one prefix for the whole Pile train set.
DATA_PREFIX="${DATA_PREFIX:-/data/pile/megatron/pile_train_text_document}"
# GPT-NeoX-20B tokenizer (50277 ids with its added tokens; Pythia uses the same).
TOKENIZER_JSON="${TOKENIZER_JSON:-/data/pile/gpt-neox-20b/tokenizer.json}"
CKPT_ROOT="${CKPT_ROOT:-/checkpoints/salt_pile_2p8b_1p5b}"
# GPTDataset index cache. Rank 0 builds it, the other ranks read it: keep it shared.
DATA_CACHE_DIR="${DATA_CACHE_DIR:-$CKPT_ROOT/gpt_dataset_cache}"
# The SLM: our own 1.5B (MODE=teacher writes it here), or a public Pythia imported with
# tools/convert_checkpoint.py import-hf (README, step 2b).
TEACHER_CKPT="${TEACHER_CKPT:-$CKPT_ROOT/teacher_1p5b}"

# --- model shapes ---------------------------------------------------------------
# Shared by student and teacher: GPT-NeoX/Pythia's architecture (LayerNorm with
# biases, GeLU, untied input/output embeddings, parallel attention/MLP residual,
# RoPE on a quarter of each head's dimensions), no dropout (Pythia trained without it).
# A public Pythia, imported with tools/convert_checkpoint.py, is a drop-in teacher.
SEQ_LENGTH="${SEQ_LENGTH:-2048}"
COMMON_MODEL_ARGS=(
    --seq-length "$SEQ_LENGTH"
    --max-position-embeddings "$SEQ_LENGTH"
    --position-embedding-type rope
    --rotary-percent 0.25
    --use-parallel-residual
    --normalization LayerNorm
    --norm-epsilon 1e-5
    --untie-embeddings-and-output-weights
    --hidden-dropout 0.0
    --attention-dropout 0.0
    --init-method-std 0.02
    --make-vocab-size-divisible-by 128
)

# Student, Pythia-2.8B's architecture: 2,775,208,960 parameters at TP=1 (vocab padded to 50304).
STUDENT_MODEL_ARGS=(
    --num-layers 32
    --hidden-size 2560
    --ffn-hidden-size 10240
    --num-attention-heads 32
    "${COMMON_MODEL_ARGS[@]}"
)

# SLM teacher, ~1.5B: Pythia-1.4B's width with 26 instead of 24 layers,
# 1,515,364,352 parameters at TP=1 (24 layers would give 1.41B).
TEACHER_MODEL_ARGS=(
    --num-layers 26
    --hidden-size 2048
    --ffn-hidden-size 8192
    --num-attention-heads 16
    "${COMMON_MODEL_ARGS[@]}"
)

# --- layout ------------------------------------------------------------------------
# Student: TP=1 PP=1, pure data parallelism. A 2.8B model fits one H100 with the
# distributed optimizer (estimate_memory.py), and TP would only add all-reduces on
# every layer. The co-located teacher: TP=1 PP=1, a full bf16 copy on every GPU,
# run on the same micro-batches as its student replica (no communication at all).
# See README.md for the TP=2 / PP=2 alternatives and their memory.
STUDENT_TP="${STUDENT_TP:-1}"
STUDENT_PP="${STUDENT_PP:-1}"
MBS="${MBS:-4}"
KD_TEACHER_TP="${KD_TEACHER_TP:-1}"
KD_TEACHER_PP="${KD_TEACHER_PP:-1}"
# Layout of the teacher's own pretraining run (MODE=teacher).
TEACHER_TP="${TEACHER_TP:-1}"
TEACHER_PP="${TEACHER_PP:-1}"
TEACHER_MBS="${TEACHER_MBS:-8}"

STUDENT_PARALLEL_ARGS=(
    --tensor-model-parallel-size "$STUDENT_TP"
    --pipeline-model-parallel-size "$STUDENT_PP"
    --micro-batch-size "$MBS"
    --use-distributed-optimizer
)
TEACHER_PARALLEL_ARGS=(
    --tensor-model-parallel-size "$TEACHER_TP"
    --pipeline-model-parallel-size "$TEACHER_PP"
    --micro-batch-size "$TEACHER_MBS"
    --use-distributed-optimizer
)

# --- precision -----------------------------------------------------------------------
# bf16 weights and activations; FP8 GEMMs through Transformer Engine (E4M3 forward,
# E5M2 gradients, delayed scaling). The teacher's forward runs under the same
# fp8_autocast. FP8_FORMAT= (empty) trains in plain bf16.
FP8_FORMAT="${FP8_FORMAT-hybrid}"
PRECISION_ARGS=(--bf16)
if [[ -n "$FP8_FORMAT" ]]; then
    PRECISION_ARGS+=(--fp8-format "$FP8_FORMAT" --fp8-recipe delayed)
fi

# --- schedule ---------------------------------------------------------------------------
# The paper's baseline runs ~208K steps; SALT uses the teacher for the first 36K.
# Batch size and learning rates are not in the paper: ours are 512 x 2048 tokens
# (1M tokens/step, 218B tokens in 208K steps, under one Pile epoch) and Pythia's
# peak learning rates for these widths, cosine decay to 10% after 1% warmup.
GBS="${GBS:-512}"
TRAIN_ITERS="${TRAIN_ITERS:-208000}"
WARMUP_ITERS="${WARMUP_ITERS:-2080}"
TRAIN_ARGS=(
    --global-batch-size "$GBS"
    --train-iters "$TRAIN_ITERS"
    --lr-decay-style cosine
    --lr-warmup-iters "$WARMUP_ITERS"
    --lr-decay-iters "$TRAIN_ITERS"
    --weight-decay 0.01
    --adam-beta1 0.9
    --adam-beta2 0.95
    --adam-eps 1e-8
    --clip-grad 1.0
    --seed 1234
)
STUDENT_LR_ARGS=(--lr 1.6e-4 --min-lr 1.6e-5)
TEACHER_LR_ARGS=(--lr 2.0e-4 --min-lr 2.0e-5)

# --- data ------------------------------------------------------------------------------
DATA_ARGS=(
    --data-path "$DATA_PREFIX"
    --split "998,1,1"
    --data-cache-path "$DATA_CACHE_DIR"
    --tokenizer-type HuggingFaceTokenizer
    --tokenizer-model "$TOKENIZER_JSON"
)

# --- SALT ------------------------------------------------------------------------------
# n_KD = 36K of 208K steps (the paper's main runs; 20K-60K ablated). w, T and top-k
# are not given in the paper: w=0.5 with the paper's hard switch (constant), T=1,
# the full vocabulary.
KD_ITERS="${KD_ITERS:-36000}"
KD_ALPHA="${KD_ALPHA:-0.5}"
KD_TEMPERATURE="${KD_TEMPERATURE:-1.0}"
KD_SCHEDULE="${KD_SCHEDULE:-constant}"
KD_ARGS=(
    --kd-teacher-load "$TEACHER_CKPT"
    --kd-teacher-tensor-model-parallel-size "$KD_TEACHER_TP"
    --kd-teacher-pipeline-model-parallel-size "$KD_TEACHER_PP"
    --kd-iters "$KD_ITERS"
    --kd-alpha "$KD_ALPHA"
    --kd-temperature "$KD_TEMPERATURE"
    --kd-schedule "$KD_SCHEDULE"
)

# --- SALT_DS: the SLM scores the data, the KD phase trains on the selection -------------------
# MODE=score runs tools/score_data.py with the teacher over KD_DATA_PREFIX (data-parallel over
# every GPU of the job) and writes KD_DATA_PREFIX.salt_scores.{npy,json}; MODE=salt_ds is
# MODE=salt plus the selection flags. The paper ranks training *sequences*: SCORE_UNIT=window
# scores every SEQ_LENGTH window on its own and the KD phase trains on exactly the selected
# windows; KD_DATA_SELECTION_BY=subset applies the rule within each Pile subset
# (DATA_PREFIX.subsets.npy, written by tools/preprocess_pile.py), so the KD phase keeps the
# corpus mix. top:0.5 of ~300B tokens leaves ~150B for the 36K x 1M = 38B KD tokens.
# KD_DATA_PREFIX: the data scored and selected from (default: all of DATA_PREFIX; a prefix
# of fewer shards scores for less, see README step 3).
KD_DATA_PREFIX="${KD_DATA_PREFIX:-$DATA_PREFIX}"
SCORE_UNIT="${SCORE_UNIT:-window}"
SCORE_TOP_K="${SCORE_TOP_K:-10}"
SCORE_MBS="${SCORE_MBS:-16}"
KD_DATA_SELECTION="${KD_DATA_SELECTION:-top:0.5}"
KD_DATA_SELECTION_BY="${KD_DATA_SELECTION_BY:-subset}"
SCORE_ARGS=(
    --load "$TEACHER_CKPT"
    --data-path "$KD_DATA_PREFIX"
    --score-unit "$SCORE_UNIT"
    --score-seq-length "$SEQ_LENGTH"
    --score-top-k "$SCORE_TOP_K"
    --score-statistic median
    --score-micro-batch-size "$SCORE_MBS"
    --bf16
)
KD_DS_ARGS=(
    --kd-data-path "$KD_DATA_PREFIX"
    --kd-data-selection "$KD_DATA_SELECTION"
    --kd-data-selection-by "$KD_DATA_SELECTION_BY"
)

# --- checkpoints and logging ---------------------------------------------------------------
SAVE_INTERVAL="${SAVE_INTERVAL:-1000}"
WANDB_PROJECT="${WANDB_PROJECT:-salt-pile-2p8b-1p5b}"
# SALT and baseline students share one wandb group, so their curves share charts.
STUDENT_WANDB_GROUP="${STUDENT_WANDB_GROUP:-student_2p8b_gbs${GBS}_s${SEQ_LENGTH}}"
TEACHER_WANDB_GROUP="${TEACHER_WANDB_GROUP:-teacher_1p5b_gbs${GBS}_s${SEQ_LENGTH}}"
LOG_ARGS=(
    --log-interval 10
    --eval-interval 2000
    --eval-iters 20
    --save-interval "$SAVE_INTERVAL"
    --wandb-project "$WANDB_PROJECT"
)

# --- few-shot evaluation (tools/evaluate.py, docs/evaluation.md) ---------------------------
# Our default suite, grouped by domain (the paper reports a few-shot average with domain
# breakdowns; the task list below is ours, see README.md): closed-book QA; reading
# comprehension; cloze and completion; commonsense reasoning; SuperGLUE; NLI.
EVAL_TASKS="${EVAL_TASKS:-triviaqa,nq_open,webqs,race,boolq,lambada_openai,hellaswag,piqa,winogrande,wsc273,arc_easy,arc_challenge,openbookqa,copa,sglue_rte,cb,wic,multirc,record,anli_r1,anli_r2,anli_r3}"
EVAL_FEWSHOT="${EVAL_FEWSHOT:-1}"
# 70% and 100% of the baseline's steps (146K is the paper's 70% point; 145.6K is not saved).
EVAL_ITERATIONS="${EVAL_ITERATIONS:-146000,208000}"
