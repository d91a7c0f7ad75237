"""Data for the KD phase: ``--kd-data-path``, optionally narrowed by ``--kd-data-selection``.

``--split`` applies here as well, so when the KD data is (a subset of) the
training corpus, the KD phase never trains on its validation documents. The
unit selected (documents or training windows) is the one the sidecars were
scored in; ``--kd-data-selection-by subset`` applies the rule within each Pile
subset.
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
    SelectedWindowDataset,
    SelectedWindowDatasetConfig,
)
from megatron_salt.selection.rules import Selection
from megatron_salt.selection.units import ScoredUnits
from megatron_salt.training.data import DatasetTokenizer, build_datasets, gpt_dataset_config

logger = logging.getLogger(__name__)


class EmptySelectionError(ValueError):
    """``--kd-data-selection`` keeps no document (of a prefix, or of its train split)."""


def select_units(
    prefixes: list[str],
    selection: Selection,
    by: str = "global",
    seq_length: int | None = None,
) -> tuple[str, dict[str, np.ndarray]]:
    """(unit, prefix -> kept units) from each prefix's score sidecar.

    Documents: sorted ids. Windows: ``[n, 2]`` (document, window) pairs, whose
    length must be the training ``seq_length``.
    """
    selected, units = {}, set()
    for prefix in prefixes:
        scored = ScoredUnits.load(prefix)
        units.add(scored.unit)
        scored_length = scored.header.seq_length
        if scored.unit == "window" and seq_length is not None and scored_length != seq_length:
            raise EmptySelectionError(
                f"{prefix} was scored in windows of {scored_length} tokens, but "
                f"--seq-length is {seq_length}: the KD phase trains on the scored "
                "windows, so score with --score-seq-length equal to --seq-length"
            )
        keep = scored.select(selection, by)
        if len(keep) == 0:
            num_scored = int(np.isfinite(scored.scores).sum())
            raise EmptySelectionError(
                f"{selection.text} keeps no {scored.unit} of {prefix} ({num_scored} of "
                f"{len(scored.scores)} {scored.unit}s have a score)"
            )
        selected[prefix] = scored.window_pairs(keep) if scored.unit == "window" else keep
        header = scored.header
        logger.info(
            "--kd-data-selection %s (by %s): %s keeps %d of %d %ss, %d of %d tokens "
            "(%d scored by %s, top-%d %s)",
            selection.text,
            by,
            prefix,
            len(keep),
            len(scored.scores),
            scored.unit,
            int(scored.tokens[keep].sum()),
            int(scored.tokens.sum()),
            header.num_scored,
            header.slm_checkpoint,
            header.top_k,
            header.statistic,
        )
    if len(units) > 1:
        raise EmptySelectionError(
            "the --kd-data-path prefixes were scored in different units (document and "
            "window); score them all with the same tools/score_data.py --score-unit"
        )
    return units.pop(), selected


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
    unit, selected = select_units(
        prefixes, Selection.parse(kd.data_selection), kd.data_selection_by, seq_length
    )
    if unit == "window":
        config = gpt_dataset_config(
            **common, config_class=SelectedWindowDatasetConfig, selected_windows=selected
        )
        dataset_class = SelectedWindowDataset
    else:
        config = gpt_dataset_config(
            **common, config_class=SelectedGPTDatasetConfig, selected_documents=selected
        )
        dataset_class = SelectedGPTDataset
    try:
        train, _, _ = build_datasets(config, [num_samples, 0, 0], dataset_class=dataset_class)
    except NoSelectedDocumentError as err:
        raise EmptySelectionError(f"{kd.data_selection}: {err} (--split {split})") from None
    return train
