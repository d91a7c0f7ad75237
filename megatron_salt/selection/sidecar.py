"""Per-document SLM scores stored beside a Megatron ``.bin/.idx`` prefix.

Two files next to ``{prefix}.idx``:

* ``{prefix}.salt_scores.npy`` - float32, one score per unit: per document in
  ``.idx`` document order (``unit: document``), or per training window in
  (document, window) order (``unit: window``, see :mod:`.windows`); NaN for units
  too short (or too hard) to score;
* ``{prefix}.salt_scores.json`` - the header: which SLM checkpoint scored, with
  which top-k, statistic, unit and window length, a fingerprint of the ``.idx``
  and one of the ``.bin`` (size, blake2b of the whole file, blake2b of 64 sampled
  blocks, modification time), and what scoring cost (tokens, seconds, FLOPs).

The header is written last and removed first, so a half-written pair is never
read. Readers check the fingerprints: scores computed for another ``.idx``
(re-tokenised corpus, other shard) or another ``.bin`` (e.g. two documents of equal
length swapped: same ``.idx``, other tokens) are refused with a clear error rather
than silently misaligned.

``.bin`` checks. ``quick`` (the default, milliseconds): size and sampled blocks, and
the whole-file hash whenever the ``.bin``'s modification time differs from the one
recorded (it was rewritten, or copied). ``full``: always the whole-file hash.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

SCORES_SUFFIX = ".salt_scores.npy"
HEADER_SUFFIX = ".salt_scores.json"
FORMAT_VERSION = 3  # 2: the .bin fingerprint; 3: unit, min_window_fill, scoring cost
BIN_CHECKS = ("quick", "full")
_SAMPLED_BLOCKS, _SAMPLE_BYTES = 64, 1 << 16


class StaleScoresError(ValueError):
    """The sidecar does not belong to this ``.idx`` (or is missing/incomplete)."""


@dataclass
class ScoreHeader:
    """Everything needed to trust, reproduce and compare a set of scores."""

    slm_checkpoint: str  # resolved iter_N directory
    slm_iteration: int
    slm_fingerprint: str  # model config + checkpoint metadata digest
    top_k: int
    statistic: str  # "median" | "mean"
    seq_length: int
    idx_fingerprint: str
    num_documents: int
    num_scored: int
    format_version: int = FORMAT_VERSION
    bin_size: int = -1  # -1: written before format 2 (no .bin binding)
    bin_blake2b: str = ""
    bin_sampled: str = ""
    bin_mtime_ns: int = -1
    unit: str = "document"  # "document" | "window" (format 3)
    num_windows: int = -1  # unit "window": entries of the .npy
    min_window_fill: float = 0.0  # unit "window": a short last window needs this many S labels
    # Scoring cost (format 3; -1: not recorded): tokens fed to the SLM, the
    # wall-clock of the invocation that published the scores (a lower bound when
    # it resumed chunks from an earlier one), its ranks, and the forward FLOPs
    # 2*N*tokens (N: the SLM's parameters; megatron_salt.flops).
    scored_tokens: int = -1
    scoring_seconds: float = -1.0
    scoring_world_size: int = -1
    resumed_chunks: int = 0
    scoring_flops: float = -1.0

    @property
    def num_units(self) -> int:
        return self.num_windows if self.unit == "window" else self.num_documents


def idx_fingerprint(prefix: str) -> str:
    """Digest of the whole ``.idx`` (document/sequence structure, not the tokens' bytes).

    The ``.idx`` pins document boundaries and lengths; together with the
    tokeniser those fix what every document is, at a fraction of the ``.bin``'s size.
    """
    digest = hashlib.blake2b(digest_size=16)
    path = prefix + ".idx"
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return f"blake2b:{os.path.getsize(path)}:{digest.hexdigest()}"


@dataclass
class BinFingerprint:
    """What identifies a ``.bin``: size, whole-file and sampled-block digests, mtime."""

    size: int
    blake2b: str
    sampled: str
    mtime_ns: int

    @classmethod
    def of(cls, prefix: str) -> BinFingerprint:
        """All four (reads the whole ``.bin``: at scoring time, which reads it anyway)."""
        path = prefix + ".bin"
        stat = os.stat(path)
        return cls(stat.st_size, bin_digest(path), sampled_digest(path), stat.st_mtime_ns)


def bin_digest(path: str) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def sampled_digest(path: str) -> str:
    """blake2b of 64 blocks of 64 KiB spread evenly over the file (and its size)."""
    size = os.path.getsize(path)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(str(size).encode())
    span = max(size - _SAMPLE_BYTES, 0)
    with open(path, "rb") as f:
        for i in range(_SAMPLED_BLOCKS):
            f.seek(span * i // (_SAMPLED_BLOCKS - 1))
            digest.update(f.read(_SAMPLE_BYTES))
    return digest.hexdigest()


def check_bin(prefix: str, header: ScoreHeader, header_path: Path, mode: str = "quick") -> None:
    """Refuse scores whose ``.bin`` changed since scoring (:class:`StaleScoresError`)."""
    if mode not in BIN_CHECKS:
        raise ValueError(f"bin check must be one of {BIN_CHECKS}, got {mode!r}")
    path = prefix + ".bin"
    stale = f"{header_path}: scores were computed for another {path}"
    stat = os.stat(path)
    if stat.st_size != header.bin_size:
        raise StaleScoresError(
            f"{stale} ({header.bin_size} bytes, now {stat.st_size}); re-run tools/score_data.py"
        )
    if sampled_digest(path) != header.bin_sampled:
        raise StaleScoresError(f"{stale} (its content changed); re-run tools/score_data.py")
    if mode == "full" or stat.st_mtime_ns != header.bin_mtime_ns:
        if bin_digest(path) != header.bin_blake2b:
            raise StaleScoresError(
                f"{stale} (same size, other content: e.g. documents of equal length swapped); "
                "re-run tools/score_data.py"
            )


def scores_paths(prefix: str) -> tuple[Path, Path]:
    return Path(prefix + SCORES_SUFFIX), Path(prefix + HEADER_SUFFIX)


def write_scores(prefix: str, scores: np.ndarray, header: ScoreHeader) -> None:
    """Publish scores atomically: header removed, array renamed in, header renamed in."""
    scores_path, header_path = scores_paths(prefix)
    if len(scores) != header.num_units:
        raise ValueError(f"{len(scores)} scores for {header.num_units} {header.unit}s")
    header_path.unlink(missing_ok=True)
    tmp = scores_path.with_name(scores_path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(scores, dtype=np.float32))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, scores_path)
        tmp = header_path.with_name(header_path.name + ".tmp")
        tmp.write_text(json.dumps(asdict(header), indent=2, sort_keys=True) + "\n")
        os.replace(tmp, header_path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # e.g. a full disk: leave no temporary behind
        raise


def read_header(prefix: str) -> ScoreHeader:
    _, header_path = scores_paths(prefix)
    if not header_path.is_file():
        raise StaleScoresError(
            f"{prefix}: no SLM scores ({header_path.name} missing); "
            "run tools/score_data.py on it first"
        )
    try:
        header = ScoreHeader(**json.loads(header_path.read_text()))
    except (ValueError, TypeError) as err:
        raise StaleScoresError(f"{header_path}: unreadable score header ({err})") from None
    if header.unit not in ("document", "window"):
        raise StaleScoresError(f"{header_path}: unknown score unit {header.unit!r}")
    return header


def load_scores(
    prefix: str,
    *,
    check_fingerprint: bool = True,
    bin_check: str = "quick",
    warn: Callable[[str], None] = logger.warning,
) -> tuple[np.ndarray, ScoreHeader]:
    """Scores and header for ``prefix``; :class:`StaleScoresError` if they don't match it.

    ``bin_check``: ``quick`` or ``full`` (see the module docstring).
    """
    scores_path, header_path = scores_paths(prefix)
    header = read_header(prefix)
    if check_fingerprint:
        current = idx_fingerprint(prefix)
        if header.idx_fingerprint != current:
            raise StaleScoresError(
                f"{header_path}: scores were computed for another {prefix}.idx "
                f"({header.idx_fingerprint}, now {current}); re-run tools/score_data.py"
            )
        if header.bin_size < 0:
            warn(
                f"note: {header_path} predates .bin fingerprints: only {prefix}.idx is "
                "checked (re-run tools/score_data.py to bind the scores to the .bin)"
            )
        else:
            check_bin(prefix, header, header_path, bin_check)
    if not scores_path.is_file():
        raise StaleScoresError(f"{header_path} has no {scores_path.name} beside it")
    scores = np.load(scores_path)
    if scores.shape != (header.num_units,):
        raise StaleScoresError(
            f"{scores_path}: {scores.shape[0]} scores, header says "
            f"{header.num_units} {header.unit}s"
        )
    if header.unit == "window" and check_fingerprint:
        from megatron.core.datasets.indexed_dataset import IndexedDataset

        from megatron_salt.selection.windows import document_lengths, windows_per_document

        lengths = document_lengths(IndexedDataset(prefix, mmap=True))
        expected = int(windows_per_document(lengths, header.seq_length).sum())
        if expected != header.num_windows:
            raise StaleScoresError(
                f"{header_path}: {header.num_windows} windows of {header.seq_length} tokens, "
                f"{prefix} has {expected}; re-run tools/score_data.py"
            )
    return scores, header
