#!/usr/bin/env python
"""Write the offline few-shot tasks (lm-eval YAML + jsonl) from held-out demo-corpus documents.

    python tools/make_eval_tasks.py --corpus demo_out/corpus --out demo_out/eval_tasks

--corpus is the training corpus (make_demo_corpus.py's output): the tasks draw only on
documents it does not hold, and drop any example found verbatim in it. Pass --out to
tools/evaluate.py --include-path (see docs/evaluation.md).
"""

import argparse
import sys
import time

from megatron_salt.evaluation.local_tasks import LocalTaskConfig, build_local_tasks


def main(argv=None) -> int:
    defaults = LocalTaskConfig()
    parser = argparse.ArgumentParser(prog="make_eval_tasks", description=__doc__.split("\n")[1])
    parser.add_argument("--corpus", required=True, help="the demo corpus trained on (shards)")
    parser.add_argument("--out", required=True, help="task directory to write (replaced)")
    parser.add_argument(
        "--docs-per-subset",
        type=int,
        default=defaults.docs_per_subset,
        help=f"held-out pydoc pages and source files to read (default {defaults.docs_per_subset})",
    )
    parser.add_argument(
        "--max-examples",
        type=int,
        default=defaults.max_examples,
        help=f"test examples per task at most (default {defaults.max_examples})",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--processes", type=int, default=2, help="pydoc renderer processes")
    args = parser.parse_args(argv)
    if args.docs_per_subset <= defaults.fewshot_docs:
        parser.error(f"--docs-per-subset must be more than {defaults.fewshot_docs}")
    cfg = LocalTaskConfig(
        docs_per_subset=args.docs_per_subset, max_examples=args.max_examples, seed=args.seed
    )
    start = time.perf_counter()
    try:
        manifest = build_local_tasks(args.corpus, args.out, cfg, processes=args.processes)
    except (OSError, ValueError, RuntimeError) as err:
        print(f"make_eval_tasks: error: {err}", file=sys.stderr)
        return 2
    for task, counts in manifest["tasks"].items():
        print(f"{task}: {counts['test']} test, {counts['fewshot']} few-shot examples")
    print(f"wrote {args.out} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
