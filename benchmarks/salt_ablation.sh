#!/usr/bin/env bash
# SALT / SALT_DS ablation on the tiny CPU example, two seeds (BENCHMARKS.md, "SALT in the
# paper's regime"). Runs after `make demo` (reuses its data, teacher and scores). Per seed:
#   baseline; SALT (n_KD = the demo's KD_ITERS); an n_KD sweep; SALT_DS with the SLM's
#   score per document or per training window, selected globally or within each Pile subset.
# Writes one comparison per seed under $DEMO_DIR/ablation/. Runs resume if stopped.
#
#   benchmarks/salt_ablation.sh                       # 20 student runs + 1 scoring pass
#   SEEDS="1234" KD_SWEEP="16 80" benchmarks/salt_ablation.sh
# The paper's regime (a teacher weaker than the baseline student), as in BENCHMARKS.md:
#   export TEACHER_ITERS=80 TEACHER_GLOBAL_BATCH=8 DEMO_DIR=regime_out
#   make demo DEMO_DIR=regime_out
#   SEEDS=1234 benchmarks/salt_ablation.sh & SEEDS=4321 benchmarks/salt_ablation.sh; wait
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export PY
DEMO_DIR=${DEMO_DIR:-demo_out}
export DEMO_DIR STAGE_TIMES=${STAGE_TIMES:-$DEMO_DIR/ablation/stage_times.tsv}
# shellcheck source=examples/tiny_cpu/config.sh
source examples/tiny_cpu/config.sh
RUN=examples/tiny_cpu/run.sh
SEEDS=${SEEDS:-1234 4321}
# One thread per run, so every run of the table uses the same kernels: at this scale the thread
# count alone moves a run's final loss (the same SALT_DS run ended 0.09 apart at 1 and 2
# threads). Two copies of this script, one per seed (SEEDS=...), can share 2 cores.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
KD_SWEEP=${KD_SWEEP:-16 32 80 128}  # n_KD: 10%, 20%, 50%, 80% of the steps (the demo: 30%)
if [[ ! -f "$RUNS/teacher/done" || ! -f "$DATA.salt_scores.json" ]]; then
    echo "salt_ablation.sh: error: no trained teacher or scores in $DEMO_DIR; run 'make demo' first" >&2
    exit 2
fi

# The other scoring unit than the demo's: the same tokens under a second prefix (one
# sidecar per prefix), scored per document or per --seq-length window.
OTHER_UNIT=window; [[ "$SCORE_UNIT" == window ]] && OTHER_UNIT=document
OTHER_DATA=$DEMO_DIR/ablation/${OTHER_UNIT}_scores/$(basename "$DATA")
if [[ ! -f "$OTHER_DATA.salt_scores.json" ]]; then
    mkdir -p "$(dirname "$OTHER_DATA")"
    for suffix in .bin .idx .subsets.npy .summary.json .max_token_id.json; do
        if [[ -e "$DATA$suffix" ]]; then ln -f "$DATA$suffix" "$OTHER_DATA$suffix"; fi
    done
    DATA=$OTHER_DATA SCORE_UNIT=$OTHER_UNIT STAGE_TIMES=/dev/null "$RUN" score
fi
declare -A UNIT_DATA=([$SCORE_UNIT]=$DATA [$OTHER_UNIT]=$OTHER_DATA)

variant() {  # variant NAME MODE [VAR=VALUE...]
    local name=$1 mode=$2; shift 2
    env "$@" RUN_NAME="$name" "$RUN" "$mode"
}

for seed in $SEEDS; do
    tag="_seed$seed"
    variant "baseline$tag" baseline SEED="$seed"
    variant "salt$tag" salt SEED="$seed"
    for kd in $KD_SWEEP; do variant "salt_kd$kd$tag" salt SEED="$seed" KD_ITERS="$kd"; done
    for unit in document window; do
        for by in global subset; do
            variant "salt_ds_${unit}_$by$tag" salt_ds SEED="$seed" DATA="${UNIT_DATA[$unit]}" \
                SCORE_UNIT="$unit" KD_SELECTION_BY="$by"
        done
    done

    runs=("$RUNS/baseline$tag" "$RUNS/salt$tag")
    for kd in $KD_SWEEP; do runs+=("$RUNS/salt_kd$kd$tag"); done
    runs+=("$RUNS"/salt_ds_{document,window}_{global,subset}"$tag")
    mkdir -p "$DEMO_DIR/ablation"
    "$PY" tools/compare_runs.py "${runs[@]}" --baseline "$RUNS/baseline$tag" \
        --out "$DEMO_DIR/ablation/seed$seed" --title "SALT ablation, seed $seed (tiny CPU demo)"
done
for unit in document window; do
    for by in global subset; do
        echo "== kept by $KD_SELECTION ($unit scores, $by)"
        "$PY" tools/select_data.py --data-path "${UNIT_DATA[$unit]}" --kd-data-selection "$KD_SELECTION" \
            --kd-data-selection-by "$by"
    done
done | tee "$DEMO_DIR/ablation/selections.txt"
echo "== ablation tables: $DEMO_DIR/ablation/seed*.md, kept mix: $DEMO_DIR/ablation/selections.txt"
