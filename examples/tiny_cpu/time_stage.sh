#!/usr/bin/env bash
# time_stage.sh NAME CMD...: run CMD; when it succeeds, append "NAME<TAB>SECONDS" to $STAGE_TIMES.
# make demo's report (tools/compare_runs.py --stage-times) shows where the time went.
set -euo pipefail
name=$1; shift
start=$(date +%s.%N)
"$@"
end=$(date +%s.%N)
mkdir -p "$(dirname "${STAGE_TIMES:?time_stage.sh: STAGE_TIMES is not set}")"
awk -v n="$name" -v a="$start" -v b="$end" 'BEGIN { printf "%s\t%.1f\n", n, b - a }' >> "$STAGE_TIMES"
