"""Where a rank's slice of a tensor-parallel vocabulary sits.

Megatron-Core shards the (padded) vocabulary over the TP group in equal contiguous
slices: rank ``r`` of ``tp`` holds columns ``[r * columns, (r + 1) * columns)``. The
columns at or past the tokenizer's true ``vocab_size`` are padding and carry no
probability. Every vocab-parallel computation here (the KD loss, the teacher->student
alignment, the argmax, the SLM's scores) starts from this one description.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist

__all__ = ["VocabShard", "group_size_and_rank", "resolve_tp_group"]


def group_size_and_rank(group: dist.ProcessGroup | None) -> tuple[int, int]:
    """``(world size, rank)`` in ``group``; ``None`` (or no process group) is ``(1, 0)``."""
    if group is None or not dist.is_initialized():
        return 1, 0
    return dist.get_world_size(group), dist.get_rank(group)


def resolve_tp_group(group: dist.ProcessGroup | None) -> dist.ProcessGroup | None:
    """``None`` means Megatron-Core's TP group when model parallel is initialised, else no TP."""
    if group is not None:
        return group
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        return parallel_state.get_tensor_model_parallel_group()
    return None


@dataclass(frozen=True)
class VocabShard:
    """This rank's columns of a vocabulary sharded over ``group``."""

    group: dist.ProcessGroup | None
    world_size: int
    rank: int
    columns: int  # columns per rank (the padded vocab / world_size)
    vocab_size: int  # the true vocabulary; columns >= it are padding

    @classmethod
    def of(
        cls, group: dist.ProcessGroup | None, columns: int, vocab_size: int | None = None
    ) -> VocabShard:
        """The shard of a rank holding ``columns`` columns; ``vocab_size`` None: all real."""
        world_size, rank = group_size_and_rank(group)
        if vocab_size is None:
            vocab_size = columns * world_size
        return cls(group, world_size, rank, columns, vocab_size)

    @property
    def offset(self) -> int:
        """Global vocab id of this rank's first column."""
        return self.rank * self.columns

    @property
    def n_valid(self) -> int:
        """Real (non-padding) columns on this rank: a prefix of its slice, maybe empty."""
        return min(max(self.vocab_size - self.offset, 0), self.columns)

    @property
    def padded_vocab(self) -> int:
        return self.columns * self.world_size
