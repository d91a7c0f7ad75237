#!/usr/bin/env bash
# SALT ablation on the tiny CPU example: does the demo's SALT gain survive other choices of
# w, n_KD, schedule, T and seed? Runs after `make demo` (reuses its data, teacher, scores and
# baseline/salt/salt_ds runs) and writes one comparison per seed under $DEMO_DIR/ablation/.
#
#   benchmarks/salt_ablation.sh            # ~25 min on 2 cores (10 student runs of ~2.2 min)
#
# Each variant changes one setting of examples/tiny_cpu/config.sh; everything else (data,
# steps, LR schedule, teacher) stays the demo's. Runs resume if interrupted.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export PY
DEMO_DIR=${DEMO_DIR:-demo_out}
RUNS=$DEMO_DIR/runs
RUN=examples/tiny_cpu/run.sh
if [[ ! -f "$RUNS/teacher/done" ]]; then
    echo "salt_ablation.sh: error: no trained teacher in $RUNS/teacher; run 'make demo' first" >&2
    exit 2
fi

variant() {  # variant NAME MODE [VAR=VALUE...]
    local name=$1 mode=$2; shift 2
    env "$@" RUN_NAME="$name" DEMO_DIR="$DEMO_DIR" "$RUN" "$mode"
}

# Seed 1234 (the demo's): the demo runs are the reference points.
variant salt_w0.3 salt KD_ALPHA=0.3
variant salt_w0.7 salt KD_ALPHA=0.7
variant salt_linear salt KD_SCHEDULE=linear
variant salt_kd30 salt KD_ITERS=30
variant salt_kd120 salt KD_ITERS=120
variant salt_T2 salt KD_TEMPERATURE=2.0
# SALT_DS with a milder selection: does keeping 80% of documents undo top:0.5's subset skew?
variant salt_ds_top0.8 salt_ds KD_SELECTION=top:0.8
# Another seed (initialisation and data order): is the gap larger than seed noise?
variant baseline_seed4321 baseline SEED=4321
variant salt_seed4321 salt SEED=4321
variant salt_ds_seed4321 salt_ds SEED=4321

mkdir -p "$DEMO_DIR/ablation"
"$PY" tools/compare_runs.py "$RUNS"/{baseline,salt,salt_w0.3,salt_w0.7,salt_linear,salt_kd30,salt_kd120,salt_T2,salt_ds,salt_ds_top0.8} \
    --baseline "$RUNS/baseline" --out "$DEMO_DIR/ablation/seed1234" \
    --title "SALT ablation, seed 1234 (tiny CPU demo)"
"$PY" tools/compare_runs.py "$RUNS"/{baseline_seed4321,salt_seed4321,salt_ds_seed4321} \
    --baseline "$RUNS/baseline_seed4321" --out "$DEMO_DIR/ablation/seed4321" \
    --title "SALT vs baseline, seed 4321 (tiny CPU demo)"
echo "== ablation tables: $DEMO_DIR/ablation/seed1234.md $DEMO_DIR/ablation/seed4321.md"
