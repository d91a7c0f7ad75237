"""Data for the KD phase: ``--kd-data-path`` (optionally narrowed by ``--kd-data-selection``)."""

from __future__ import annotations

from megatron.core.datasets.gpt_dataset import GPTDataset

from megatron_salt.config import KDConfig
from megatron_salt.training.data import DatasetTokenizer, build_datasets, gpt_dataset_config


def build_kd_dataset(
    kd: KDConfig,
    *,
    num_samples: int,
    seq_length: int,
    seed: int,
    tokenizer: DatasetTokenizer,
    eod_mask_loss: bool,
    cache_path: str | None,
) -> GPTDataset:
    """All of ``--kd-data-path`` is KD training data (no validation split is taken from it)."""
    if kd.data_selection is not None:
        raise NotImplementedError("--kd-data-selection is not implemented yet")
    config = gpt_dataset_config(
        data_path=kd.data_path,
        split="100,0,0",
        seq_length=seq_length,
        seed=seed,
        tokenizer=tokenizer,
        eod_mask_loss=eod_mask_loss,
        cache_path=cache_path,
    )
    train, _, _ = build_datasets(config, [num_samples, 0, 0])
    return train
