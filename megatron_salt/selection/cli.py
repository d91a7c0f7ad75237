"""Command lines of ``tools/score_data.py`` and ``tools/select_data.py``."""

from __future__ import annotations

import argparse
import json
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
        help="window length (default: the SLM's --seq-length)",
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
        score_prefix(scorer, prefix, chunk_documents=chunk_documents, log=log)


def score_main(argv: Sequence[str] | None = None) -> int:
    prog = "score_data.py"
    parser = _Parser(
        prog=prog,
        description="Score every document of Megatron .bin/.idx prefixes with an SLM (SALT_DS); "
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
    args = parser.parse_args(argv)
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


def _quantile_table(scores: np.ndarray) -> list[str]:
    finite = scores[np.isfinite(scores)]
    lines = [
        f"documents: {len(scores):,} | scored: {len(finite):,} | "
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


def _subset_names(prefix: str) -> tuple[np.ndarray, list[str]] | None:
    """Per-document Pile subset ids and their names, if preprocess_pile.py recorded them."""
    ids_path, summary_path = Path(prefix + ".subsets.npy"), Path(prefix + ".summary.json")
    if not (ids_path.is_file() and summary_path.is_file()):
        return None
    names = json.loads(summary_path.read_text()).get("subset_names")
    return (np.load(ids_path), names) if names is not None else None


def describe_selection(
    prefix: str, selection_text: str | None, bin_check: str = "quick"
) -> list[str]:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from megatron_salt.selection.rules import Selection
    from megatron_salt.selection.sidecar import load_scores

    scores, header = load_scores(prefix, bin_check=bin_check, warn=print)
    lines = [
        f"{prefix}: scored by {header.slm_checkpoint} (iteration {header.slm_iteration}), "
        f"{header.statistic} loss over positions whose label is in the SLM's top-{header.top_k}, "
        f"windows of {header.seq_length} tokens",
        *_quantile_table(scores),
    ]
    if selection_text is None:
        return lines
    keep = Selection.parse(selection_text).select(scores)
    if len(keep) == 0:
        scored = int(np.isfinite(scores).sum())
        raise ValueError(
            f"--kd-data-selection {selection_text} keeps no document of {prefix} "
            f"({scored} of {len(scores)} documents have a score)"
        )
    dataset = IndexedDataset(prefix, mmap=True)
    bounds = dataset.document_indices
    doc_tokens = (
        np.add.reduceat(dataset.sequence_lengths.astype(np.int64), bounds[:-1])
        if len(bounds) > 1
        else np.zeros(0, np.int64)
    )
    total_tokens = int(doc_tokens.sum())
    kept_tokens = int(doc_tokens[keep].sum())
    lines.append(
        f"selection {selection_text}: keeps {len(keep):,} of {len(scores):,} documents "
        f"({len(keep) / max(len(scores), 1):.1%}), {kept_tokens:,} of {total_tokens:,} tokens "
        f"({kept_tokens / max(total_tokens, 1):.1%})"
    )
    if len(keep):
        lines.append(
            f"  kept scores: {scores[keep].min():.3f} .. {scores[keep].max():.3f} "
            f"(mean {scores[keep].mean():.3f})"
        )
    subsets = _subset_names(prefix)
    if subsets is not None:
        # Token shares, not document shares: a rule can keep half the documents of a
        # subset and a fifth of its tokens, and tokens are what the KD phase trains on.
        lines.append(
            f"  {'Pile subset':<24} {'docs kept':>13} {'tokens kept':>23} {'token share':>11}"
        )
        kept_mask = np.zeros(len(scores), dtype=bool)
        kept_mask[keep] = True
        ids, names = subsets
        for index, name in enumerate(names):
            in_subset = ids == index
            docs, docs_total = int((kept_mask & in_subset).sum()), int(in_subset.sum())
            tokens = int(doc_tokens[kept_mask & in_subset].sum())
            tokens_total = int(doc_tokens[in_subset].sum())
            share = tokens / max(tokens_total, 1)
            lines.append(
                f"  {name:<24} {docs:>6,}/{docs_total:<6,} {tokens:>11,}/{tokens_total:<11,} "
                f"{share:>11.1%}"
            )
    return lines


def select_main(argv: Sequence[str] | None = None) -> int:
    prog = "select_data.py"
    parser = _Parser(
        prog=prog,
        description="Print the SLM score distribution of prefixes and what a "
        "--kd-data-selection rule keeps (documents, tokens, per Pile subset).",
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
    args = parser.parse_args(argv)
    from megatron_salt.selection.sidecar import StaleScoresError

    for prefix in args.data_path:
        try:
            lines = describe_selection(prefix, args.kd_data_selection, args.kd_data_selection_check)
        except (StaleScoresError, ValueError, FileNotFoundError) as err:
            return _fail(prog, str(err))
        print("\n".join(lines))
    return 0
