"""A Megatron-Core GPTDataset restricted to selected documents (no copy of the corpus).

``SelectedGPTDataset`` is built by the usual ``BlendedMegatronDatasetBuilder``
(blends, weights, ``--split``); it only intersects each split's document ids
with the documents selected for its prefix before GPTDataset builds its
document/sample/shuffle indices. The selection's digest is part of the index
cache key, so a selected and a full dataset of one prefix never share a cache.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig


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
