"""Training data: Megatron-Core GPTDatasets over ``.bin/.idx`` prefixes, fed by sample index.

Batches are a pure function of the global step: step ``g`` reads samples
``[g*GBS, (g+1)*GBS)`` of its dataset, and data-parallel rank ``d`` takes, for
micro-batch ``m``, the ``mbs`` samples at ``g*GBS + (m*DP + d)*mbs`` (Megatron's
pretraining sampler order). Resuming therefore needs only the number of
samples consumed, which the checkpoint records.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
from megatron.core.datasets.utils import get_blend_from_list

logger = logging.getLogger(__name__)


class DatasetTokenizer:
    """The two tokenizer facts GPTDataset needs (EOD id, vocab size), nothing else.

    ``unique_identifiers`` enters GPTDataset's index-cache hash.
    """

    def __init__(self, eod: int, vocab_size: int) -> None:
        self.eod = eod
        self.vocab_size = vocab_size
        self.unique_identifiers = {"eod": eod, "vocab_size": vocab_size}


def gpt_dataset_config(
    *,
    data_path: Sequence[str],
    split: str,
    seq_length: int,
    seed: int,
    tokenizer: DatasetTokenizer,
    eod_mask_loss: bool,
    cache_path: str | None,
    config_class: type[GPTDatasetConfig] = GPTDatasetConfig,
    **extra: object,
) -> GPTDatasetConfig:
    return config_class(
        random_seed=seed,
        sequence_length=seq_length,
        blend=get_blend_from_list(list(data_path)),
        split=split,
        path_to_cache=cache_path,
        tokenizer=tokenizer,
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=eod_mask_loss,
        # Causal masks are built by the attention (TE) or by Megatron-Core's default.
        create_attention_mask=False,
        mmap_bin_files=True,
        **extra,
    )


def build_datasets(
    config: GPTDatasetConfig,
    num_samples: Sequence[int],
    dataset_class: type[GPTDataset] = GPTDataset,
) -> list[GPTDataset | None]:
    """(train, valid, test) GPTDatasets with at least ``num_samples`` samples each."""
    builder = BlendedMegatronDatasetBuilder(
        dataset_class, list(num_samples), is_built_on_rank=lambda: True, config=config
    )
    return builder.build()


@dataclass
class BatchLayout:
    global_batch_size: int
    micro_batch_size: int
    data_parallel_size: int
    data_parallel_rank: int

    @property
    def num_microbatches(self) -> int:
        return self.global_batch_size // (self.micro_batch_size * self.data_parallel_size)

    def sample_indices(self, step: int, microbatch: int) -> range:
        start = (
            step * self.global_batch_size
            + (microbatch * self.data_parallel_size + self.data_parallel_rank)
            * self.micro_batch_size
        )
        return range(start, start + self.micro_batch_size)


def collate(
    samples: Sequence[dict[str, torch.Tensor]], device: torch.device
) -> dict[str, torch.Tensor]:
    return {key: torch.stack([s[key] for s in samples]).to(device) for key in samples[0]}


def microbatches(
    dataset: GPTDataset,
    layout: BatchLayout,
    step: int,
    device: torch.device,
) -> list[dict[str, torch.Tensor]]:
    """This rank's micro-batches for one step (``step`` counts steps on *this* dataset)."""
    if (step + 1) * layout.global_batch_size > len(dataset):
        raise IndexError(
            f"dataset {dataset.dataset_path} has {len(dataset)} samples, step {step} needs "
            f"{(step + 1) * layout.global_batch_size}"
        )
    return [
        collate([dataset[i] for i in layout.sample_indices(step, m)], device)
        for m in range(layout.num_microbatches)
    ]
