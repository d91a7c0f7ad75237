"""Command lines of ``tools/score_data.py`` and ``tools/select_data.py``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import numpy as np


class _Parser(argparse.ArgumentParser):
    """One-line usage errors (no usage dump), exit status 2 like argparse."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def _fail(prog: str, message: str) -> int:
    from megatron_salt.errors import report_failure

    report_failure(f"{prog}: error: {message}")
    return 2


def add_scoring_flags(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """Flags shared by score_data.py and ``preprocess_pile.py --score-with``."""
    parser.add_argument(f"--{prefix}score-top-k", dest="score_top_k", type=int, default=10)
    parser.add_argument(
        f"--{prefix}score-statistic",
        dest="score_statistic",
        choices=["median", "mean"],
        default="median",
    )
    parser.add_argument(
        f"--{prefix}score-micro-batch-size", dest="score_micro_batch_size", type=int, default=8
    )
    parser.add_argument(
        f"--{prefix}score-seq-length",
        dest="score_seq_length",
        type=int,
        default=None,
        help="window length (default: the SLM's --seq-length); with --score-unit window "
        "it must equal the student's --seq-length",
    )
    parser.add_argument(
        f"--{prefix}score-unit",
        dest="score_unit",
        choices=["document", "window"],
        default="window",
        help="window (default): one score per --seq-length training window, the paper's "
        "'sequence', and the KD phase trains on exactly the selected windows; document: one "
        "score per document (its windows' positions pooled)",
    )
    parser.add_argument(
        f"--{prefix}score-min-window-fill",
        dest="score_min_window_fill",
        type=float,
        default=0.5,
        help="--score-unit window: a document's short last window is scored only with at "
        "least this fraction of --score-seq-length labels (NaN, never selected, otherwise)",
    )


def init_distributed_from_env(tensor_model_parallel_size: int = 1) -> None:
    """The process group (:func:`megatron_salt.parallel.initialize_distributed`) and the
    SLM's Megatron TP groups (PP=1; data parallel over the rest)."""
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    from megatron_salt.compat import filter_upstream_noise, warn_if_untested
    from megatron_salt.parallel import initialize_distributed

    filter_upstream_noise()
    initialize_distributed()
    warn_if_untested()
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(tensor_model_parallel_size, 1)
        model_parallel_cuda_manual_seed(0)


def score(
    checkpoint: str,
    prefixes: Sequence[str],
    *,
    top_k: int,
    statistic: str,
    micro_batch_size: int,
    seq_length: int | None,
    bf16: bool = False,
    chunk_documents: int = 512,
    unit: str = "document",
    min_window_fill: float = 0.5,
    log=print,
    verify: bool = True,
) -> None:
    """Score each prefix with the SLM (collective; distributed must be initialised)."""
    from megatron_salt.config import PrecisionConfig
    from megatron_salt.selection.scoring import SLMScorer, score_prefix

    scorer = SLMScorer(
        checkpoint,
        top_k=top_k,
        statistic=statistic,
        seq_length=seq_length,
        micro_batch_size=micro_batch_size,
        precision=PrecisionConfig(bf16=bf16),
        verify=verify,
    )
    for prefix in prefixes:
        score_prefix(
            scorer,
            prefix,
            chunk_documents=chunk_documents,
            unit=unit,
            min_window_fill=min_window_fill,
            log=log,
        )


def build_score_parser(prog: str = "score_data.py") -> argparse.ArgumentParser:
    """score_data.py's flags (also read by tests of the example recipes)."""
    parser = _Parser(
        prog=prog,
        description="Score every document (or --seq-length training window) of Megatron "
        ".bin/.idx prefixes with an SLM (SALT_DS); "
        "writes {prefix}.salt_scores.npy/.json. Run with torchrun for data parallelism.",
        allow_abbrev=False,
    )
    parser.add_argument(
        "--load",
        required=True,
        help="SLM checkpoint: pretrain_salt.py's, import-hf's or Megatron-LM's (torch_dist)",
    )
    parser.add_argument("--data-path", nargs="+", required=True, help=".bin/.idx prefixes")
    add_scoring_flags(parser)
    parser.add_argument("--tensor-model-parallel-size", type=int, default=1)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument(
        "--no-ckpt-verify",
        action="store_true",
        help="skip checking --load against its manifest.json (the log says so)",
    )
    parser.add_argument(
        "--chunk-documents",
        type=int,
        default=512,
        help="documents per resumable unit of work",
    )
    return parser


def score_main(argv: Sequence[str] | None = None) -> int:
    prog = "score_data.py"
    parser = build_score_parser(prog)
    args = parser.parse_args(argv)
    if not 0.0 < args.score_min_window_fill <= 1.0:
        return _fail(
            prog, f"--score-min-window-fill {args.score_min_window_fill}: expected 0 < F <= 1"
        )
    for prefix in args.data_path:
        if not os.path.isfile(prefix + ".idx") or not os.path.isfile(prefix + ".bin"):
            return _fail(prog, f"--data-path: {prefix}.bin/.idx not found")
    if not os.path.exists(args.load):
        return _fail(prog, f"--load {args.load} does not exist")

    import torch.distributed as dist

    from megatron_salt.checkpoint_dir import CheckpointError
    from megatron_salt.errors import debug_requested, exit_after_peer_failure, peer_failed

    init_distributed_from_env(args.tensor_model_parallel_size)
    rank = dist.get_rank()
    try:
        score(
            args.load,
            args.data_path,
            top_k=args.score_top_k,
            statistic=args.score_statistic,
            micro_batch_size=args.score_micro_batch_size,
            seq_length=args.score_seq_length,
            bf16=args.bf16,
            chunk_documents=args.chunk_documents,
            unit=args.score_unit,
            min_window_fill=args.score_min_window_fill,
            verify=not args.no_ckpt_verify,
            log=(lambda m: print(f"{prog}: {m}", flush=True)) if rank == 0 else (lambda m: None),
        )
    except (CheckpointError, FileNotFoundError, ValueError) as err:
        if debug_requested():
            import traceback

            traceback.print_exc()
        return _fail(prog, f"--load {args.load}: {err}")
    except Exception as err:
        if peer_failed(err) and not debug_requested():
            return exit_after_peer_failure(err, prog)
        raise
    finally:
        dist.destroy_process_group()
    return 0


# --- select_data.py -------------------------------------------------------------


def _quantile_table(scores: np.ndarray, unit: str = "document") -> list[str]:
    finite = scores[np.isfinite(scores)]
    lines = [
        f"{unit}s: {len(scores):,} | scored: {len(finite):,} | "
        f"not scored (too short / no top-k position): {len(scores) - len(finite):,}"
    ]
    if len(finite):
        qs = [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0]
        values = np.quantile(finite, qs)
        lines.append(
            "score quantiles: "
            + " | ".join(f"q{q:.2f}={v:.3f}" for q, v in zip(qs, values, strict=True))
        )
        counts, edges = np.histogram(finite, bins=12)
        width = max(counts.max(), 1)
        for count, lo, hi in zip(counts, edges[:-1], edges[1:], strict=True):
            bar = "#" * int(round(40 * count / width))
            lines.append(f"  [{lo:7.3f}, {hi:7.3f}) {count:8,d} {bar}")
    return lines


def _subset_table(units, keep: np.ndarray) -> list[str]:
    """Per Pile subset: units and tokens kept, and its share of the corpus vs of the kept data.

    Token shares, not unit shares: a rule can keep half the documents of a subset
    and a fifth of its tokens, and tokens are what the KD phase trains on.
    """
    from megatron_salt.selection.units import subset_ids, subset_names

    path = Path(units.prefix + ".subsets.npy")
    names = subset_names(units.prefix)
    if not path.is_file() or names is None:
        return []
    groups = subset_ids(units.prefix, units.header.num_documents)[units.documents]
    kept_mask = np.zeros(len(units.scores), dtype=bool)
    kept_mask[keep] = True
    total, total_kept = int(units.tokens.sum()), int(units.tokens[keep].sum())
    unit = units.unit + "s"
    lines = [
        f"  {'Pile subset':<24} {unit + ' kept':>15} {'tokens kept':>23} {'token share':>11} "
        f"{'corpus mix':>10} {'kept mix':>8}"
    ]
    for index, name in enumerate(names):
        in_subset = groups == index
        count, count_total = int((kept_mask & in_subset).sum()), int(in_subset.sum())
        tokens = int(units.tokens[kept_mask & in_subset].sum())
        tokens_total = int(units.tokens[in_subset].sum())
        lines.append(
            f"  {name:<24} {count:>7,}/{count_total:<7,} {tokens:>11,}/{tokens_total:<11,} "
            f"{tokens / max(tokens_total, 1):>11.1%} {tokens_total / max(total, 1):>10.1%} "
            f"{tokens / max(total_kept, 1):>8.1%}"
        )
    return lines


def describe_selection(
    prefix: str, selection_text: str | None, bin_check: str = "quick", by: str = "global"
) -> list[str]:
    from megatron_salt.selection.rules import Selection
    from megatron_salt.selection.units import ScoredUnits

    units = ScoredUnits.load(prefix, bin_check=bin_check, warn=print)
    header, scores = units.header, units.scores
    lines = [
        f"{prefix}: scored by {header.slm_checkpoint} (iteration {header.slm_iteration}), "
        f"{header.statistic} loss over positions whose label is in the SLM's top-{header.top_k}, "
        + (
            f"one score per window of {header.seq_length} tokens"
            if units.unit == "window"
            else f"windows of {header.seq_length} tokens pooled per document"
        ),
        *_quantile_table(scores, units.unit),
    ]
    if selection_text is None:
        return lines
    keep = units.select(Selection.parse(selection_text), by)
    if len(keep) == 0:
        scored = int(np.isfinite(scores).sum())
        raise ValueError(
            f"--kd-data-selection {selection_text} keeps no {units.unit} of {prefix} "
            f"({scored} of {len(scores)} {units.unit}s have a score)"
        )
    total_tokens = int(units.tokens.sum())
    kept_tokens = int(units.tokens[keep].sum())
    lines.append(
        f"selection {selection_text} (by {by}): keeps {len(keep):,} of {len(scores):,} "
        f"{units.unit}s ({len(keep) / max(len(scores), 1):.1%}), {kept_tokens:,} of "
        f"{total_tokens:,} tokens ({kept_tokens / max(total_tokens, 1):.1%})"
    )
    lines.append(
        f"  kept scores: {scores[keep].min():.3f} .. {scores[keep].max():.3f} "
        f"(mean {scores[keep].mean():.3f})"
    )
    return lines + _subset_table(units, keep)


def select_main(argv: Sequence[str] | None = None) -> int:
    prog = "select_data.py"
    parser = _Parser(
        prog=prog,
        description="Print the SLM score distribution of prefixes and what a "
        "--kd-data-selection rule keeps (documents or windows, tokens, per Pile subset).",
        allow_abbrev=False,
    )
    parser.add_argument("--data-path", nargs="+", required=True)
    parser.add_argument("--kd-data-selection", default=None, help="'top:F' or 'range:LO:HI'")
    parser.add_argument(
        "--kd-data-selection-check",
        choices=["quick", "full"],
        default="quick",
        help="quick: .bin size, sampled blocks, whole-file hash if it was rewritten since "
        "scoring; full: always hash the whole .bin",
    )
    parser.add_argument(
        "--kd-data-selection-by",
        choices=["global", "subset"],
        default="global",
        help="global: one ranking per prefix; subset: the rule within each Pile subset",
    )
    args = parser.parse_args(argv)
    from megatron_salt.selection.sidecar import StaleScoresError

    for prefix in args.data_path:
        try:
            lines = describe_selection(
                prefix,
                args.kd_data_selection,
                args.kd_data_selection_check,
                args.kd_data_selection_by,
            )
        except (StaleScoresError, ValueError, FileNotFoundError) as err:
            return _fail(prog, str(err))
        print("\n".join(lines))
    return 0
