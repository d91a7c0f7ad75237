#!/usr/bin/env python
"""Few-shot evaluation of pretrain_salt.py checkpoints with lm-evaluation-harness.

    python tools/evaluate.py --load runs/baseline runs/salt --iterations all \\
        --tasks salt_lastword,salt_nextline --include-path demo_out/eval_tasks --num-fewshot 1

Each saved iteration of each run is exported to a temporary HuggingFace directory and
evaluated by lm-eval's "hf" model; results go to RUN_DIR/eval/iter_NNNNNNN.json. Tasks already
evaluated with the same settings are skipped. See docs/evaluation.md.
"""

import argparse
import sys
from typing import NoReturn


class _Parser(argparse.ArgumentParser):
    """One-line usage errors, exit status 2 like argparse."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def _limit(text: str):
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value if "." in text else int(value)


def _batch_size(text: str):
    if text == "auto" or text.startswith("auto:"):
        return text
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="evaluate.py", description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument(
        "--load", nargs="+", required=True, metavar="RUN_DIR", help="runs (their --save)"
    )
    parser.add_argument(
        "--iterations",
        default=None,
        metavar="N,M|all",
        help="saved iterations to evaluate (default: each run's latest)",
    )
    parser.add_argument("--tasks", required=True, help="comma-separated lm-eval tasks or groups")
    parser.add_argument(
        "--num-fewshot", type=int, default=None, help="shots (default: each task's own)"
    )
    parser.add_argument(
        "--include-path",
        action="append",
        default=[],
        metavar="DIR",
        help="directory of extra lm-eval task YAMLs (repeatable)",
    )
    parser.add_argument(
        "--limit", type=_limit, default=None, help="documents per task (N, or a fraction < 1)"
    )
    parser.add_argument("--batch-size", type=_batch_size, default=16)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument(
        "--tmp-dir", default=None, help="where the temporary HF exports go (default: $TMPDIR)"
    )
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks:
        build_parser().error("--tasks is empty")
    if args.num_fewshot is not None and args.num_fewshot < 0:
        build_parser().error("--num-fewshot must be >= 0")

    from megatron_salt.checkpoint_dir import CheckpointError
    from megatron_salt.convert.errors import ConversionError
    from megatron_salt.evaluation.results import EvalError, EvalSettings
    from megatron_salt.evaluation.runner import plan, run_jobs, select_iterations

    try:
        from megatron_salt.evaluation.harness import (
            HarnessConfig,
            require_lm_eval,
            resolve_tasks,
            task_manager,
        )

        require_lm_eval()  # first: a missing extra is one line saying how to install it
        selected = select_iterations(args.load, args.iterations)
        from megatron_salt.compat import filter_upstream_noise

        filter_upstream_noise()
        import torch

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        settings = EvalSettings(num_fewshot=args.num_fewshot, limit=args.limit, dtype=args.dtype)
        harness = HarnessConfig(
            batch_size=args.batch_size, device=device, include_path=tuple(args.include_path)
        )
        manager = task_manager(harness.include_path, tasks)
        tasks = resolve_tasks(tasks, manager)
        jobs, done = plan(selected, tasks, settings)
        total = len(jobs) + done
        print(
            f"evaluate.py: {total} checkpoint(s) x {len(tasks)} task(s): {len(jobs)} to do, "
            f"{done} done already",
            file=sys.stderr,
        )
        run_jobs(jobs, settings, harness, tmp_dir=args.tmp_dir, manager=manager)
    except (EvalError, CheckpointError, ConversionError, OSError) as err:
        print(f"evaluate.py: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
