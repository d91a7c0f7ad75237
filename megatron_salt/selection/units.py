"""What a score sidecar ranks (documents or windows) and what a selection keeps of it.

Shared by the KD-phase dataset (``pretrain_salt.py --kd-data-selection``) and
``tools/select_data.py``, so the two always agree on the kept units.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from megatron_salt.selection.rules import Selection
from megatron_salt.selection.sidecar import ScoreHeader, load_scores
from megatron_salt.selection.windows import (
    document_lengths,
    window_labels,
    window_offsets,
    window_pairs,
    windows_per_document,
)

SELECTION_BY = ("global", "subset")


class MissingSubsetsError(ValueError):
    """``--kd-data-selection-by subset`` on a prefix without ``{prefix}.subsets.npy``."""


@dataclass
class ScoredUnits:
    """A prefix's scores and, per scored unit, its document and trained tokens."""

    prefix: str
    scores: np.ndarray  # one per unit
    header: ScoreHeader
    documents: np.ndarray  # document of each unit
    tokens: np.ndarray  # tokens of each unit: a document's length, a window's labels

    @property
    def unit(self) -> str:
        return self.header.unit

    @classmethod
    def load(cls, prefix: str, bin_check: str = "quick", warn=None) -> ScoredUnits:
        from megatron.core.datasets.indexed_dataset import IndexedDataset

        kwargs = {"warn": warn} if warn is not None else {}
        scores, header = load_scores(prefix, bin_check=bin_check, **kwargs)
        lengths = document_lengths(IndexedDataset(prefix, mmap=True))
        if header.unit == "window":
            counts = windows_per_document(lengths, header.seq_length)
            documents = np.repeat(np.arange(len(lengths)), counts)
            tokens = window_labels(lengths, header.seq_length)
        else:
            documents, tokens = np.arange(len(lengths)), lengths
        return cls(prefix, scores, header, documents, tokens)

    def select(self, selection: Selection, by: str = "global") -> np.ndarray:
        """Sorted flat ids of the kept units."""
        if by not in SELECTION_BY:
            raise ValueError(f"--kd-data-selection-by must be one of {SELECTION_BY}, got {by!r}")
        groups = None
        if by == "subset":
            groups = subset_ids(self.prefix, self.header.num_documents)[self.documents]
        return selection.select(self.scores, groups)

    def window_pairs(self, flat_ids: np.ndarray) -> np.ndarray:
        """``[n, 2]`` (document, window) of window units ``flat_ids``."""
        counts = np.bincount(self.documents, minlength=self.header.num_documents)
        return window_pairs(flat_ids, window_offsets(counts))


def subset_ids(prefix: str, num_documents: int | None = None) -> np.ndarray:
    """Per-document Pile subset ids from ``{prefix}.subsets.npy`` (tools/preprocess_pile.py)."""
    path = Path(prefix + ".subsets.npy")
    if not path.is_file():
        raise MissingSubsetsError(
            f"--kd-data-selection-by subset: {path} not found (per-document Pile subset "
            "ids, written by tools/preprocess_pile.py)"
        )
    ids = np.load(path)
    if num_documents is not None and ids.shape != (num_documents,):
        raise MissingSubsetsError(f"{path}: {len(ids)} ids for {num_documents} documents")
    return ids


def subset_names(prefix: str) -> list[str] | None:
    """Names of the subset ids, from ``{prefix}.summary.json`` (None if not recorded)."""
    path = Path(prefix + ".summary.json")
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("subset_names")
