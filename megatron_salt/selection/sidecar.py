"""Per-document SLM scores stored beside a Megatron ``.bin/.idx`` prefix.

Two files next to ``{prefix}.idx``:

* ``{prefix}.salt_scores.npy`` - float32, one score per document in ``.idx``
  document order, NaN for documents too short (or too hard) to score;
* ``{prefix}.salt_scores.json`` - the header: which SLM checkpoint scored, with
  which top-k, statistic and window length, and a fingerprint of the ``.idx``.

The header is written last and removed first, so a half-written pair is never
read. Readers check the fingerprint: scores computed for another ``.idx``
(re-tokenised corpus, other shard) are refused with a clear error rather than
silently misaligned.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

SCORES_SUFFIX = ".salt_scores.npy"
HEADER_SUFFIX = ".salt_scores.json"
FORMAT_VERSION = 1


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


def scores_paths(prefix: str) -> tuple[Path, Path]:
    return Path(prefix + SCORES_SUFFIX), Path(prefix + HEADER_SUFFIX)


def write_scores(prefix: str, scores: np.ndarray, header: ScoreHeader) -> None:
    """Publish scores atomically: header removed, array renamed in, header renamed in."""
    scores_path, header_path = scores_paths(prefix)
    if len(scores) != header.num_documents:
        raise ValueError(f"{len(scores)} scores for {header.num_documents} documents")
    header_path.unlink(missing_ok=True)
    tmp = scores_path.with_name(scores_path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, np.asarray(scores, dtype=np.float32))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, scores_path)
    tmp = header_path.with_name(header_path.name + ".tmp")
    tmp.write_text(json.dumps(asdict(header), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, header_path)


def read_header(prefix: str) -> ScoreHeader:
    _, header_path = scores_paths(prefix)
    if not header_path.is_file():
        raise StaleScoresError(
            f"{prefix}: no SLM scores ({header_path.name} missing); "
            "run tools/score_data.py on it first"
        )
    values = json.loads(header_path.read_text())
    return ScoreHeader(**values)


def load_scores(prefix: str, *, check_fingerprint: bool = True) -> tuple[np.ndarray, ScoreHeader]:
    """Scores and header for ``prefix``; :class:`StaleScoresError` if they don't match it."""
    scores_path, header_path = scores_paths(prefix)
    header = read_header(prefix)
    if check_fingerprint:
        current = idx_fingerprint(prefix)
        if header.idx_fingerprint != current:
            raise StaleScoresError(
                f"{header_path}: scores were computed for another {prefix}.idx "
                f"({header.idx_fingerprint}, now {current}); re-run tools/score_data.py"
            )
    if not scores_path.is_file():
        raise StaleScoresError(f"{header_path} has no {scores_path.name} beside it")
    scores = np.load(scores_path)
    if scores.shape != (header.num_documents,):
        raise StaleScoresError(
            f"{scores_path}: {scores.shape[0]} scores, header says {header.num_documents} documents"
        )
    return scores, header
