"""``tools/preprocess_pile.py``: preprocessing, then (``--score-with``) SALT_DS scoring.

The two jobs stay apart: :mod:`megatron_salt.data.preprocess` writes the ``.bin/.idx``
and knows nothing of scoring; this command line adds the scoring flags to its parser
and, once the prefixes are written, scores them the way ``tools/score_data.py`` does.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from megatron_salt.data import preprocess
from megatron_salt.selection.cli import add_scoring_flags, init_distributed_from_env, score

PROG = preprocess.PROG


def build_parser() -> argparse.ArgumentParser:
    parser = preprocess.build_parser()
    group = parser.add_argument_group("SALT_DS scores (optional)")
    group.add_argument(
        "--score-with",
        metavar="SLM_CHECKPOINT",
        default=None,
        help="after writing, score every document with this SLM checkpoint (pretrain_salt.py's, "
        "import-hf's or Megatron-LM's) and "
        "write {prefix}.salt_scores.npy/.json (see tools/score_data.py)",
    )
    add_scoring_flags(group)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``tools/preprocess_pile.py`` / ``salt-preprocess-pile``. Exit 0, 2 (bad input or
    flags: one ``preprocess_pile: error: ...`` line on stderr) or 130 (interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.score_with is not None:
        from megatron_salt.checkpoint_dir import CheckpointError, resolve_checkpoint

        try:  # before hours of tokenizing, not after
            resolve_checkpoint(args.score_with)
        except CheckpointError as err:
            print(f"{PROG}: error: --score-with: {err}", file=sys.stderr)
            return 2
    status = preprocess.run(parser, args)
    if status != 0 or args.score_with is None:
        return status
    return _score_outputs(args)


def _score_outputs(args: argparse.Namespace) -> int:
    """The SLM scores the prefixes just written (one process, or torchrun's)."""
    prefixes = [preprocess.output_prefix_for(args.output_prefix, key) for key in args.json_keys]
    init_distributed_from_env()
    try:
        score(
            args.score_with,
            prefixes,
            top_k=args.score_top_k,
            statistic=args.score_statistic,
            micro_batch_size=args.score_micro_batch_size,
            seq_length=args.score_seq_length,
            unit=args.score_unit,
            min_window_fill=args.score_min_window_fill,
            log=lambda message: print(f"[{PROG}] score: {message}", file=sys.stderr, flush=True),
        )
    except (ValueError, FileNotFoundError) as err:
        print(f"{PROG}: error: --score-with {args.score_with}: {err}", file=sys.stderr)
        return 2
    return 0
