#!/usr/bin/env python
"""Compare SALT runs with their baseline: a markdown table and a PNG (see docs/compare_runs.md).

    python tools/compare_runs.py demo_out/runs/baseline demo_out/runs/salt demo_out/runs/salt_ds \
        --out demo_out/report/compare

Each RUN_DIR is a run's --save directory (its metrics.jsonl), a wandb directory, a wandb
offline-run-* directory or a .wandb file. Writes PREFIX.png and PREFIX.md and prints the table.
"""

import argparse
import sys
from pathlib import Path

from megatron_salt.report import (
    ReportError,
    disambiguate_names,
    load_run,
    pick_baseline,
    write_report,
)
from megatron_salt.stage_times import (
    StageTimesError,
    describe_machine,
    read_stage_times,
    render_stage_times,
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="compare_runs", description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="runs to compare")
    parser.add_argument(
        "--baseline",
        metavar="RUN_DIR",
        default=None,
        help="the baseline run (default: the one run that logged mode 'baseline')",
    )
    parser.add_argument(
        "--out", default="compare_runs", metavar="PREFIX", help="writes PREFIX.png and PREFIX.md"
    )
    parser.add_argument("--title", default="SALT vs baseline", help="title of the plot and table")
    parser.add_argument(
        "--stage-times",
        metavar="FILE",
        default=None,
        help="append the machine and the wall-clock per stage from FILE "
        "(NAME<TAB>SECONDS lines, as examples/tiny_cpu/time_stage.sh writes them)",
    )
    parser.add_argument(
        "--count-teacher-cost",
        metavar="TEACHER_RUN",
        default=None,
        help="the teacher's pretraining run: add its cost (6*N*tokens FLOPs, its training "
        "time) to every SALT run's compute to reach the baseline",
    )
    parser.add_argument(
        "--scoring-cost",
        nargs="+",
        metavar="PREFIX",
        default=None,
        help="with --count-teacher-cost: data prefixes whose score sidecars "
        "(PREFIX.salt_scores.json) record the scoring cost, added to SALT_DS runs",
    )
    args = parser.parse_args(argv)
    if args.scoring_cost and not args.count_teacher_cost:
        print("compare_runs: error: --scoring-cost needs --count-teacher-cost", file=sys.stderr)
        return 2
    try:
        import matplotlib  # noqa: F401 - the plot needs it; say so before reading anything
    except ImportError:
        print(
            "compare_runs: error: the plot needs matplotlib, which is not installed: "
            "pip install 'megatron-salt[plot]' (or pip install matplotlib)",
            file=sys.stderr,
        )
        return 2

    try:
        paths = [Path(p) for p in args.runs]
        runs = [load_run(p) for p in paths]
        baseline = None
        if args.baseline is not None:
            wanted = Path(args.baseline).resolve()
            listed = [r for p, r in zip(paths, runs, strict=True) if p.resolve() == wanted]
            baseline = listed[0] if listed else load_run(args.baseline)
            if not listed:
                runs.insert(0, baseline)
        baseline = pick_baseline(runs, baseline)
        disambiguate_names(runs)
        overhead = None
        if args.count_teacher_cost:
            from megatron_salt.compute_cost import load_overhead

            overhead = load_overhead(args.count_teacher_cost, args.scoring_cost or ())
        extra = []
        if args.stage_times is not None:
            extra.append(render_stage_times(read_stage_times(args.stage_times), describe_machine()))
        png, md, text = write_report(
            runs, baseline, args.out, title=args.title, overhead=overhead, extra_sections=extra
        )
    except (ReportError, StageTimesError, OSError) as err:
        print(f"compare_runs: error: {err}", file=sys.stderr)
        return 2
    print(text, end="")
    print(f"wrote {md} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
