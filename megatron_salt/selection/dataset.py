"""Megatron-Core GPTDatasets restricted to selected documents or windows (no copy of the corpus).

``SelectedGPTDataset`` is built by the usual ``BlendedMegatronDatasetBuilder``
(blends, weights, ``--split``); it only intersects each split's document ids
with the documents selected for its prefix before GPTDataset builds its
document/sample/shuffle indices. The selection's digest is part of the index
cache key, so a selected and a full dataset of one prefix never share a cache.

``SelectedWindowDataset`` does the same for window scores (``--score-unit
window``): each sample is exactly one selected training window, nothing is
re-packed across the selection boundary.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
from megatron.core.datasets.utils import Split

from megatron_salt.compat.versions import gpt_sample_query_returns_lengths


class NoSelectedDocumentError(ValueError):
    """The selection and a split of the prefix have no document in common."""


@dataclass
class SelectedGPTDatasetConfig(GPTDatasetConfig):
    #: prefix -> sorted document ids to keep
    selected_documents: dict[str, np.ndarray] = field(default_factory=dict)
    #: digest of the rule and the selected ids; enters the cache key
    selection_fingerprint: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        digest = hashlib.blake2b(digest_size=12)
        for prefix in sorted(self.selected_documents):
            digest.update(prefix.encode())
            digest.update(np.ascontiguousarray(self.selected_documents[prefix], np.int64))
        self.selection_fingerprint = digest.hexdigest()


class SelectedGPTDataset(GPTDataset):
    """GPTDataset over ``split documents ∩ selected documents`` of its prefix."""

    def __init__(
        self, indexed_dataset, dataset_path, indexed_indices, num_samples, index_split, config
    ):
        selected = config.selected_documents.get(dataset_path)
        if selected is None:
            raise KeyError(f"no document selection for {dataset_path}")
        indexed_indices = np.intersect1d(indexed_indices, selected, assume_unique=True)
        if indexed_indices.size == 0:
            raise NoSelectedDocumentError(
                f"keeps no document of the {index_split.name} split of {dataset_path}"
            )
        super().__init__(
            indexed_dataset, dataset_path, indexed_indices, num_samples, index_split, config
        )

    @staticmethod
    def _key_config_attributes() -> list[str]:
        return [*GPTDataset._key_config_attributes(), "selection_fingerprint"]


@dataclass
class SelectedWindowDatasetConfig(GPTDatasetConfig):
    #: prefix -> ``[n, 2]`` int64 (document, window) pairs to keep, sorted
    selected_windows: dict[str, np.ndarray] = field(default_factory=dict)
    #: digest of the selected pairs; enters the cache key
    selection_fingerprint: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        digest = hashlib.blake2b(digest_size=12)
        digest.update(b"windows")
        for prefix in sorted(self.selected_windows):
            digest.update(prefix.encode())
            digest.update(np.ascontiguousarray(self.selected_windows[prefix], np.int64))
        self.selection_fingerprint = digest.hexdigest()


class SelectedWindowDataset(GPTDataset):
    """One sample per selected training window of the split's documents; no packing.

    Sample ``i`` is window ``(d, w)`` = tokens ``[w*S, w*S + S]`` of document ``d``
    (see :mod:`megatron_salt.selection.windows`); a short last window is padded
    and GPTDataset masks the padding out of the loss. The windows are shuffled
    per epoch (``random_seed``) and repeated in new orders when more samples are
    asked for than there are windows. The index is built in memory on every rank
    (one int64 pair per window, deterministic), so nothing is cached on disk; the
    selection's digest still enters ``unique_description`` for blends.
    """

    def __init__(
        self, indexed_dataset, dataset_path, indexed_indices, num_samples, index_split, config
    ):
        selected = config.selected_windows.get(dataset_path)
        if selected is None:
            raise KeyError(f"no window selection for {dataset_path}")
        bounds = indexed_dataset.document_indices
        if len(bounds) - 1 != len(indexed_dataset.sequence_lengths):
            # GPTDataset splits by sequence; windows are defined on whole documents.
            raise ValueError(
                f"{dataset_path}: window selection needs one sequence per document "
                f"({len(bounds) - 1} documents, {len(indexed_dataset.sequence_lengths)} "
                "sequences)"
            )
        self.windows = selected[np.isin(selected[:, 0], indexed_indices)]
        if len(self.windows) == 0 and (num_samples or index_split == Split.train):
            raise NoSelectedDocumentError(
                f"keeps no window of the {index_split.name} split of {dataset_path}"
            )
        # else: an empty validation/test split the KD phase never reads (asked for 0 samples)
        super().__init__(
            indexed_dataset, dataset_path, indexed_indices, num_samples, index_split, config
        )

    def _build_document_sample_shuffle_indices(self):
        """document_index: each window's document; sample_index: its first token;
        shuffle_index: the sample order, one permutation per epoch."""
        n = len(self.windows)
        epochs = max(1, -(-int(self.num_samples or 0) // n)) if n else 0
        rng = np.random.RandomState(self.config.random_seed)
        shuffle_index = np.concatenate([rng.permutation(n) for _ in range(epochs)] or [[]])
        shuffle_index = shuffle_index.astype(np.int64)
        document_index = self.windows[:, 0].copy()
        sample_index = self.windows[:, 1] * self.config.sequence_length
        return document_index, sample_index, shuffle_index

    def __len__(self) -> int:
        return len(self.shuffle_index)

    def _query_document_sample_shuffle_indices(self, idx: int) -> tuple:
        """``(tokens, [document])``, plus ``[tokens before padding]`` where Megatron-Core
        expects per-document lengths (0.19; :func:`gpt_sample_query_returns_lengths`)."""
        window = self.shuffle_index[idx]
        document = int(self.document_index[window])
        start = int(self.sample_index[window])
        wanted = self.config.sequence_length + self.config.add_extra_token_to_sequence
        available = int(self.dataset.sequence_lengths[document]) - start
        text = self.dataset.get(document, offset=start, length=min(wanted, available))
        text = np.asarray(text, dtype=np.int64)
        unpadded = len(text)
        if unpadded < wanted:
            text = np.concatenate([text, np.full(wanted - unpadded, self._pad_token_id)])
        if gpt_sample_query_returns_lengths():
            return text, np.array([document], dtype=np.int64), [unpadded]
        return text, np.array([document], dtype=np.int64)

    @staticmethod
    def _key_config_attributes() -> list[str]:
        return [*GPTDataset._key_config_attributes(), "selection_fingerprint"]
