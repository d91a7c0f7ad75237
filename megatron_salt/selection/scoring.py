"""SALT_DS scores: how "challenging yet learnable" each document is for the SLM.

For every position of a document the SLM predicts the next token. A position
counts when the true token is among the SLM's top-k predictions (learnable);
the document's score is the median (or mean) of the SLM's loss over the
counted positions (challenging). Documents are cut into windows of the SLM's
``seq_length`` without carrying context across windows, exactly how the
document is seen in training. A document with no counted position scores NaN.
With ``unit="window"`` each window is scored on its own instead (the paper's
"sequence"; layout in :mod:`megatron_salt.selection.windows`).

Scoring runs data-parallel (and with the SLM's TP) under torchrun. Work is cut
into chunks of documents; each finished chunk is saved under
``{prefix}.salt_scores.partial/``, so a killed job resumes where it stopped,
at any data-parallel size.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron_salt.checkpoint_dir import load_model_config, open_checkpoint
from megatron_salt.compat import current_device
from megatron_salt.config import ParallelConfig, PrecisionConfig
from megatron_salt.distill import VocabShard
from megatron_salt.selection.sidecar import (
    BinFingerprint,
    ScoreHeader,
    idx_fingerprint,
    sampled_digest,
    write_scores,
)
from megatron_salt.selection.windows import UNITS, document_lengths, min_labels
from megatron_salt.teacher import load_frozen_gpt

logger = logging.getLogger(__name__)

STATISTICS = ("median", "mean")


def slm_fingerprint(ckpt_dir: Path) -> str:
    """Identity of a checkpoint: its model config and dist_checkpointing metadata."""
    digest = hashlib.blake2b(digest_size=12)
    for name in ("model_config.json", "metadata.json", ".metadata"):
        path = ckpt_dir / name
        if path.is_file():
            digest.update(name.encode() + path.read_bytes())
    return digest.hexdigest()


class SLMScorer:
    """A frozen SLM (Megatron's global TP group, PP=1) that scores token sequences."""

    def __init__(
        self,
        checkpoint: str | Path,
        *,
        top_k: int = 10,
        statistic: str = "median",
        seq_length: int | None = None,
        micro_batch_size: int = 8,
        precision: PrecisionConfig | None = None,
        verify: bool = True,
    ) -> None:
        if statistic not in STATISTICS:
            raise ValueError(f"--score-statistic must be one of {STATISTICS}, got {statistic!r}")
        if top_k < 1:
            raise ValueError("--score-top-k must be >= 1")
        self.ckpt_dir = open_checkpoint(checkpoint, verify=verify, log=logger.warning).path
        self.model_cfg = load_model_config(self.ckpt_dir)
        self.top_k = top_k
        self.statistic = statistic
        self.seq_length = seq_length or self.model_cfg.seq_length
        self.micro_batch_size = micro_batch_size
        tp = parallel_state.get_tensor_model_parallel_world_size()
        self.model = load_frozen_gpt(
            self.ckpt_dir, self.model_cfg, ParallelConfig(tp, 1), precision or PrecisionConfig()
        )
        self.fingerprint = slm_fingerprint(self.ckpt_dir)
        suffix = self.ckpt_dir.name.removeprefix("iter_")
        self.iteration = int(suffix) if suffix.isdigit() else -1

    # --- one batch of windows -------------------------------------------------

    @torch.no_grad()
    def window_losses(
        self, tokens: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-position loss and 'label in the SLM's top-k' for windows ``[b, s]``."""
        b, s = tokens.shape
        position_ids = torch.arange(s, device=tokens.device).unsqueeze(0).expand(b, -1)
        logits = self.model(tokens, position_ids, None, labels=labels)  # [s, b, v/tp]
        loss, in_top_k = vocab_parallel_loss_and_top_k(
            logits,
            labels.t(),
            self.model_cfg.vocab_size,
            self.top_k,
            parallel_state.get_tensor_model_parallel_group(),
        )
        return loss.t(), in_top_k.t()

    # --- documents -------------------------------------------------------------

    def _counted_positions(
        self, documents: Sequence[np.ndarray]
    ) -> list[tuple[int, int, np.ndarray]]:
        """(document, labels, losses at counted positions) for every window, in order."""
        vocab = self.model_cfg.vocab_size
        top = max((int(ids.max()) for ids in documents if len(ids)), default=-1)
        if top >= vocab:
            raise ValueError(
                f"token id {top} is beyond the SLM's vocab of {vocab}: was the data "
                "tokenized for another model?"
            )
        s = self.seq_length
        windows = [
            (doc, start)
            for doc, ids in enumerate(documents)
            for start in range(0, max(len(ids) - 1, 0), s)
        ]
        out: list[tuple[int, int, np.ndarray]] = []
        device = current_device()
        for first in range(0, len(windows), self.micro_batch_size):
            batch = windows[first : first + self.micro_batch_size]
            tokens = np.zeros((len(batch), s), dtype=np.int64)
            labels = np.zeros((len(batch), s), dtype=np.int64)
            lengths = []
            for row, (doc, start) in enumerate(batch):
                ids = documents[doc]
                length = min(s, len(ids) - 1 - start)
                tokens[row, :length] = ids[start : start + length]
                labels[row, :length] = ids[start + 1 : start + 1 + length]
                lengths.append(length)
            loss, in_top_k = self.window_losses(
                torch.from_numpy(tokens).to(device), torch.from_numpy(labels).to(device)
            )
            loss, in_top_k = loss.float().cpu().numpy(), in_top_k.cpu().numpy()
            for row, ((doc, _), length) in enumerate(zip(batch, lengths, strict=True)):
                keep = in_top_k[row, :length]
                out.append((doc, length, loss[row, :length][keep]))
        return out

    def _reduce(self, values: list[np.ndarray]) -> float:
        """The statistic over the counted positions (NaN when none counted)."""
        joined = np.concatenate(values) if values else np.empty(0, dtype=np.float32)
        if not joined.size:
            return float("nan")
        reduce = np.median if self.statistic == "median" else np.mean
        return float(reduce(joined.astype(np.float64)))

    def score_documents(self, documents: Sequence[np.ndarray]) -> np.ndarray:
        """One float32 score per document (NaN: nothing to score)."""
        counted: list[list[np.ndarray]] = [[] for _ in documents]
        for doc, _, values in self._counted_positions(documents):
            counted[doc].append(values)
        return np.array([self._reduce(parts) for parts in counted], dtype=np.float32)

    def score_windows(self, documents: Sequence[np.ndarray], min_fill: float = 0.5) -> np.ndarray:
        """One float32 score per training window, flat in (document, window) order.

        A window with fewer than ``ceil(min_fill * seq_length)`` labels (a short
        last window) scores NaN, as does one without a counted position.
        """
        needed = min_labels(self.seq_length, min_fill)
        return np.array(
            [
                self._reduce([values]) if length >= needed else float("nan")
                for _, length, values in self._counted_positions(documents)
            ],
            dtype=np.float32,
        )


def vocab_parallel_loss_and_top_k(
    logits: torch.Tensor,
    labels: torch.Tensor,
    vocab_size: int,
    top_k: int,
    tp_group: dist.ProcessGroup | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy, and whether the label is in the top-k, over a TP-sharded vocab.

    ``logits``: ``[..., v/tp]``; padded columns (``>= vocab_size``) are excluded. The
    label is in the top-k when fewer than k logits are strictly above it, which is
    exactly ``label_logit >= (k-th largest logit)``: each rank contributes its local
    top-k values (k per token), so only per-token data crosses the TP group.
    """
    shard = VocabShard.of(tp_group, logits.size(-1), vocab_size)
    world, local, start, valid = shard.world_size, shard.columns, shard.offset, shard.n_valid
    logits = logits.float()
    if valid < local:
        logits = logits.clone()
        logits[..., valid:] = float("-inf")

    lse = torch.logsumexp(logits, dim=-1)
    in_shard = (labels >= start) & (labels < start + valid)
    local_label = torch.where(in_shard, labels - start, torch.zeros_like(labels))
    label_logit = logits.gather(-1, local_label.unsqueeze(-1)).squeeze(-1)
    label_logit = torch.where(in_shard, label_logit, torch.zeros_like(label_logit))
    top = torch.topk(logits, min(top_k, local), dim=-1).values
    if world > 1:
        top_lse = lse.clone()
        dist.all_reduce(top_lse, op=dist.ReduceOp.MAX, group=tp_group)
        sum_exp = torch.exp(lse - top_lse)
        dist.all_reduce(sum_exp, group=tp_group)
        lse = top_lse + torch.log(sum_exp)
        dist.all_reduce(label_logit, group=tp_group)
        gathered = [torch.empty_like(top) for _ in range(world)]
        dist.all_gather(gathered, top.contiguous(), group=tp_group)
        top = torch.topk(torch.cat(gathered, dim=-1), min(top_k, local * world), dim=-1).values
    kth = top[..., -1]
    return lse - label_logit, label_logit >= kth


# --- a whole prefix, resumable -------------------------------------------------


@dataclass
class _Job:
    """What a partial directory was computed for; chunks are reused only if it matches."""

    slm_fingerprint: str
    top_k: int
    statistic: str
    seq_length: int
    idx_fingerprint: str
    chunk_documents: int
    bin_quick: str  # size, sampled blocks, mtime: a rewritten .bin starts over
    unit: str = "document"
    min_window_fill: float = 0.0


def _documents(dataset, first: int, last: int) -> list[np.ndarray]:
    bounds = dataset.document_indices
    return [
        np.concatenate([dataset[i] for i in range(bounds[d], bounds[d + 1])]).astype(np.int64)
        if bounds[d + 1] > bounds[d]
        else np.empty(0, dtype=np.int64)
        for d in range(first, last)
    ]


def _atomic_save(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def score_prefix(
    scorer: SLMScorer,
    prefix: str,
    *,
    chunk_documents: int = 512,
    unit: str = "document",
    min_window_fill: float = 0.5,
    log: Callable[[str], None] = logger.info,
    log_interval_s: float = 30.0,
) -> np.ndarray:
    """Score every document (or training window) of ``prefix``, publish the sidecar.

    Collective. ``unit="window"`` scores each ``seq_length`` window on its own
    (:mod:`megatron_salt.selection.windows`); the chunks of work stay whole documents.
    """
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from megatron_salt.flops import approx_forward_flops

    if unit not in UNITS:
        raise ValueError(f"--score-unit must be one of {UNITS}, got {unit!r}")
    if unit == "window" and not 0.0 < min_window_fill <= 1.0:
        raise ValueError(f"--score-min-window-fill must be in (0, 1], got {min_window_fill}")
    began = time.perf_counter()
    dataset = IndexedDataset(prefix, mmap=True)
    num_docs = dataset.document_indices.shape[0] - 1
    fingerprint = idx_fingerprint(prefix)
    bin_stat = os.stat(prefix + ".bin")
    bin_quick = f"{bin_stat.st_size}:{sampled_digest(prefix + '.bin')}:{bin_stat.st_mtime_ns}"
    job = _Job(
        scorer.fingerprint,
        scorer.top_k,
        scorer.statistic,
        scorer.seq_length,
        fingerprint,
        chunk_documents,
        bin_quick,
        unit,
        min_window_fill if unit == "window" else 0.0,
    )
    work = Path(prefix + ".salt_scores.partial")
    rank = dist.get_rank()
    if rank == 0:
        job_file = work / "job.json"
        if work.exists() and (
            not job_file.is_file() or json.loads(job_file.read_text()) != job.__dict__
        ):
            log(f"{work}: partial scores from another job; starting over")
            shutil.rmtree(work)
        work.mkdir(parents=True, exist_ok=True)
        job_file.write_text(json.dumps(job.__dict__, indent=2))
    dist.barrier()

    num_chunks = math.ceil(num_docs / chunk_documents)
    dp_rank = parallel_state.get_data_parallel_rank()
    dp_size = parallel_state.get_data_parallel_world_size()
    writes = parallel_state.get_tensor_model_parallel_rank() == 0
    mine = [c for c in range(num_chunks) if c % dp_size == dp_rank]
    already = len(list(work.glob("chunk_*.npy")))
    if rank == 0:
        if already:
            log(f"resuming {prefix}: {already} of {num_chunks} chunks already scored")
    start_time, last_log, tokens_done, computed = time.perf_counter(), 0.0, 0, 0
    for chunk in mine:
        path = work / f"chunk_{chunk:07d}.npy"
        if path.is_file():
            continue  # done before a restart
        first, last = chunk * chunk_documents, min(num_docs, (chunk + 1) * chunk_documents)
        documents = _documents(dataset, first, last)
        try:
            scores = (
                scorer.score_windows(documents, min_window_fill)
                if unit == "window"
                else scorer.score_documents(documents)
            )
        except ValueError as err:
            raise ValueError(f"{prefix}, documents {first}-{last - 1}: {err}") from None
        if writes:
            _atomic_save(path, scores)
        tokens_done += sum(len(d) for d in documents)
        computed += 1
        now = time.perf_counter()
        if rank == 0 and (now - last_log >= log_interval_s or chunk == mine[-1]):
            last_log = now
            done = len(list(work.glob("chunk_*.npy")))
            rate = tokens_done * dp_size / max(now - start_time, 1e-9)
            remaining = (num_chunks - done) * (now - start_time) / computed / dp_size
            log(
                f"scored {min(done * chunk_documents, num_docs):,}/{num_docs:,} documents of "
                f"{prefix} | {rate:,.0f} tokens/s | ETA {remaining:,.0f}s"
            )
    dist.barrier()

    scores = (
        np.concatenate([np.load(work / f"chunk_{c:07d}.npy") for c in range(num_chunks)])
        if num_chunks
        else np.empty(0, dtype=np.float32)
    )
    if rank == 0:
        # Every label position is one SLM forward token (windows do not overlap).
        scored_tokens = int(np.maximum(document_lengths(dataset) - 1, 0).sum())
        bin_fp = BinFingerprint.of(prefix)  # the whole .bin, once, on one rank
        if f"{bin_fp.size}:{bin_fp.sampled}:{bin_fp.mtime_ns}" != bin_quick:
            raise ValueError(f"{prefix}.bin changed while it was being scored; score it again")
        header = ScoreHeader(
            slm_checkpoint=str(scorer.ckpt_dir),
            slm_iteration=scorer.iteration,
            slm_fingerprint=scorer.fingerprint,
            top_k=scorer.top_k,
            statistic=scorer.statistic,
            seq_length=scorer.seq_length,
            idx_fingerprint=fingerprint,
            num_documents=num_docs,
            num_scored=int(np.isfinite(scores).sum()),
            bin_size=bin_fp.size,
            bin_blake2b=bin_fp.blake2b,
            bin_sampled=bin_fp.sampled,
            bin_mtime_ns=bin_fp.mtime_ns,
            unit=unit,
            num_windows=len(scores) if unit == "window" else -1,
            min_window_fill=job.min_window_fill,
            scored_tokens=scored_tokens,
            scoring_seconds=round(time.perf_counter() - began, 3),
            scoring_world_size=dist.get_world_size(),
            resumed_chunks=already,
            scoring_flops=approx_forward_flops(scorer.model_cfg.num_parameters(), scored_tokens),
        )
        write_scores(prefix, scores, header)
        shutil.rmtree(work)
        log(
            f"wrote {prefix}.salt_scores.npy: {header.num_scored:,} of {len(scores):,} {unit}s "
            f"scored ({scorer.statistic} loss over top-{scorer.top_k} positions) | "
            f"{scored_tokens:,} tokens, {header.scoring_seconds:,.1f}s, "
            f"{header.scoring_flops:.3g} FLOPs"
        )
    dist.barrier()
    return scores
