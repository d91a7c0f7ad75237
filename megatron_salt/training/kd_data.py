"""Data for the KD phase: ``--kd-data-path``, optionally narrowed by ``--kd-data-selection``.

``--split`` applies here as well, so when the KD data is (a subset of) the
training corpus, the KD phase never trains on its validation documents.
"""

from __future__ import annotations

import logging

import numpy as np
from megatron.core.datasets.gpt_dataset import GPTDataset
from megatron.core.datasets.utils import get_blend_from_list

from megatron_salt.config import KDConfig
from megatron_salt.selection.dataset import (
    NoSelectedDocumentError,
    SelectedGPTDataset,
    SelectedGPTDatasetConfig,
)
from megatron_salt.selection.rules import Selection
from megatron_salt.selection.sidecar import load_scores
from megatron_salt.training.data import DatasetTokenizer, build_datasets, gpt_dataset_config

logger = logging.getLogger(__name__)


class EmptySelectionError(ValueError):
    """``--kd-data-selection`` keeps no document (of a prefix, or of its train split)."""


def select_documents(prefixes: list[str], selection: Selection) -> dict[str, object]:
    """prefix -> selected document ids, from each prefix's score sidecar."""
    selected = {}
    for prefix in prefixes:
        scores, header = load_scores(prefix)
        selected[prefix] = keep = selection.select(scores)
        if len(keep) == 0:
            scored = int(np.isfinite(scores).sum())
            raise EmptySelectionError(
                f"{selection.text} keeps no document of {prefix} ({scored} of "
                f"{len(scores)} documents have a score)"
            )
        logger.info(
            "--kd-data-selection %s: %s keeps %d of %d documents (%d scored by %s, top-%d %s)",
            selection.text,
            prefix,
            len(keep),
            header.num_documents,
            header.num_scored,
            header.slm_checkpoint,
            header.top_k,
            header.statistic,
        )
    return selected


def build_kd_dataset(
    kd: KDConfig,
    *,
    num_samples: int,
    split: str,
    seq_length: int,
    seed: int,
    tokenizer: DatasetTokenizer,
    eod_mask_loss: bool,
    cache_path: str | None,
) -> GPTDataset:
    common = dict(
        data_path=kd.data_path,
        split=split,
        seq_length=seq_length,
        seed=seed,
        tokenizer=tokenizer,
        eod_mask_loss=eod_mask_loss,
        cache_path=cache_path,
    )
    if kd.data_selection is None:
        train, _, _ = build_datasets(gpt_dataset_config(**common), [num_samples, 0, 0])
        return train
    prefixes = get_blend_from_list(list(kd.data_path))[0]
    config = gpt_dataset_config(
        **common,
        config_class=SelectedGPTDatasetConfig,
        selected_documents=select_documents(prefixes, Selection.parse(kd.data_selection)),
    )
    try:
        train, _, _ = build_datasets(config, [num_samples, 0, 0], dataset_class=SelectedGPTDataset)
    except NoSelectedDocumentError as err:
        raise EmptySelectionError(f"{kd.data_selection}: {err} (--split {split})") from None
    return train
