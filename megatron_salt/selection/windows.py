"""Training windows: the unit SALT_DS scores and trains on with ``--score-unit window``.

Window ``w`` of document ``d`` (``S`` = the scoring ``--seq-length``) is the token
slice ``[w*S, w*S + S]`` of the document: ``S`` inputs and their ``S`` next-token
labels, exactly one Megatron-Core GPT sample (``sequence_length + 1`` tokens,
consecutive windows sharing one token). Windows never cross documents. A
document of ``L`` tokens has ``ceil((L-1)/S)`` windows; its last one may be
short (fewer than ``S`` labels): it is scored only when it has at least
``ceil(min_fill * S)`` labels (NaN otherwise, so never selected) and, when
selected, is trained on padded, the padding masked out of the loss.

Window scores are stored flat, in (document, window) order, so window ``w`` of
document ``d`` is entry ``offsets[d] + w`` with ``offsets`` the running sum of
:func:`windows_per_document`.
"""

from __future__ import annotations

import math

import numpy as np

UNITS = ("document", "window")


def windows_per_document(document_lengths: np.ndarray, seq_length: int) -> np.ndarray:
    """``ceil((L-1)/S)`` windows per document of ``L`` tokens (0 for ``L <= 1``)."""
    labels = np.maximum(np.asarray(document_lengths, dtype=np.int64) - 1, 0)
    return (labels + seq_length - 1) // seq_length


def window_offsets(counts: np.ndarray) -> np.ndarray:
    """``offsets[d]`` = flat index of document ``d``'s first window; ``offsets[-1]`` = total."""
    return np.concatenate(([0], np.cumsum(counts, dtype=np.int64)))


def window_pairs(flat_ids: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Flat window ids -> ``[n, 2]`` int64 ``(document, window)`` pairs."""
    flat_ids = np.asarray(flat_ids, dtype=np.int64)
    docs = np.searchsorted(offsets, flat_ids, side="right") - 1
    return np.stack([docs, flat_ids - offsets[docs]], axis=1)


def window_labels(document_lengths: np.ndarray, seq_length: int) -> np.ndarray:
    """Labels (trained tokens) of every window, flat: ``S``, except a short last window."""
    lengths = np.asarray(document_lengths, dtype=np.int64)
    counts = windows_per_document(lengths, seq_length)
    labels = np.full(int(counts.sum()), seq_length, dtype=np.int64)
    last = window_offsets(counts)[1:] - 1
    has = counts > 0
    labels[last[has]] = lengths[has] - 1 - (counts[has] - 1) * seq_length
    return labels


def min_labels(seq_length: int, min_fill: float) -> int:
    """Labels a (short, final) window needs to be scored."""
    return max(1, math.ceil(min_fill * seq_length))


def document_lengths(indexed_dataset) -> np.ndarray:
    """Tokens per document of a Megatron ``IndexedDataset`` (its sequences summed)."""
    bounds = indexed_dataset.document_indices
    if len(bounds) <= 1:
        return np.zeros(0, np.int64)
    return np.add.reduceat(indexed_dataset.sequence_lengths.astype(np.int64), bounds[:-1])
