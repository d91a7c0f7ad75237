"""Bring teacher logits onto the student's vocab shards.

A teacher and a student that share a tokenizer can still disagree on the *padded* vocab:
Megatron pads the embedding to a multiple of ``make_vocab_size_divisible_by * TP``, so a
teacher trained with another divisor or TP size has another padded width and its TP
shards cut the vocabulary at other columns (the 152064-vs-151936 case users hit with
ModelOpt). Only a different *true* vocabulary (different tokenizers) is incompatible
with token-level KD.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from megatron_salt.distill.shard import VocabShard, group_size_and_rank, resolve_tp_group

__all__ = ["check_vocab_compatible", "teacher_logits_to_student_shard", "vocab_parallel_argmax"]


def check_vocab_compatible(teacher_vocab_size: int, student_vocab_size: int) -> None:
    """Raise unless teacher and student have the same true (tokenizer) vocabulary size."""
    if teacher_vocab_size != student_vocab_size:
        raise ValueError(
            f"teacher vocab size {teacher_vocab_size} != student vocab size {student_vocab_size}: "
            "token-level KD needs teacher and student to share one tokenizer. If these are "
            "padded sizes of the same tokenizer, compare the tokenizer's true vocab size and "
            "align the logits with teacher_logits_to_student_shard"
        )


def _same_group(a, b) -> bool:
    if a is b:
        return True
    if a is None or b is None:
        return False
    return dist.get_process_group_ranks(a) == dist.get_process_group_ranks(b)


def teacher_logits_to_student_shard(
    teacher_logits: torch.Tensor,
    *,
    vocab_size: int,
    teacher_padded_vocab: int,
    student_padded_vocab: int,
    teacher_tp_group: dist.ProcessGroup | None = None,
    student_tp_group: dist.ProcessGroup | None = None,
) -> torch.Tensor:
    """Return this rank's student vocab shard of the teacher logits.

    Args:
        teacher_logits: this rank's teacher shard ``[..., teacher_padded_vocab / teacher_tp]``
            (the whole padded vocab when ``teacher_tp_group`` is ``None`` or of size 1).
        vocab_size: the true vocabulary size shared by both models.
        teacher_padded_vocab, student_padded_vocab: the models' padded vocab sizes.
        teacher_tp_group, student_tp_group: the groups sharding each model's vocab;
            ``None`` means unsharded (unlike ``vocab_parallel_kd_loss``, no Megatron
            default: the teacher may live on its own mesh).

    Returns:
        ``[..., student_padded_vocab / student_tp]`` in the teacher's dtype, the columns
        this rank's student shard holds; columns ``>= vocab_size`` are ``-inf`` (no
        probability). Three paths, chosen identically on every rank of a group:

        - same padded vocab and same TP group: ``teacher_logits`` itself (no copy; its
          padded columns keep the teacher's values, which the KD loss ignores given
          ``vocab_size``);
        - teacher unsharded: a local slice, no communication (always a copy, so the
          teacher's full-vocab logits can be freed as soon as the caller drops them);
        - otherwise: an all-gather over the teacher TP group, then a slice. Each rank
          briefly holds the teacher's full padded vocab for its tokens
          (``tokens * teacher_padded_vocab`` elements) and receives ``(tp - 1) / tp`` of it
          over the network. Prefer matching layouts when the teacher is large.
    """
    t_size, _ = group_size_and_rank(teacher_tp_group)
    s_size, _ = group_size_and_rank(student_tp_group)
    for name, padded, size in (
        ("teacher", teacher_padded_vocab, t_size),
        ("student", student_padded_vocab, s_size),
    ):
        if padded < vocab_size:
            raise ValueError(f"{name} padded vocab {padded} < vocab_size {vocab_size}")
        if padded % size:
            raise ValueError(f"{name} padded vocab {padded} is not divisible by its TP size {size}")
    t_local = teacher_padded_vocab // t_size
    if teacher_logits.shape[-1] != t_local:
        raise ValueError(
            f"teacher logits have {teacher_logits.shape[-1]} vocab columns; expected "
            f"{t_local} (teacher_padded_vocab {teacher_padded_vocab} / teacher TP {t_size})"
        )

    if teacher_padded_vocab == student_padded_vocab and (
        (t_size == 1 and s_size == 1) or _same_group(teacher_tp_group, student_tp_group)
    ):
        return teacher_logits

    student = VocabShard.of(student_tp_group, student_padded_vocab // s_size, vocab_size)
    s_local, s_start = student.columns, student.offset
    n_real = student.n_valid  # student columns that are real tokens
    if t_size == 1:
        if n_real == s_local:
            return teacher_logits[..., s_start : s_start + s_local].clone()
        shards = [teacher_logits]
    else:
        shards = [torch.empty_like(teacher_logits) for _ in range(t_size)]
        dist.all_gather(shards, teacher_logits.contiguous(), group=teacher_tp_group)

    out = teacher_logits.new_full((*teacher_logits.shape[:-1], s_local), float("-inf"))
    # Copy the real columns [s_start, s_start + n_real) piece by piece from the shards
    # that hold them, without concatenating the full vocab.
    for index, shard in enumerate(shards):
        begin = max(s_start, index * t_local)
        end = min(s_start + n_real, (index + 1) * t_local)
        if begin < end:
            out[..., begin - s_start : end - s_start] = shard[
                ..., begin - index * t_local : end - index * t_local
            ]
    return out


def vocab_parallel_argmax(
    logits: torch.Tensor, vocab_size: int, tp_group: dist.ProcessGroup | None = None
) -> torch.Tensor:
    """Global argmax over a TP-sharded vocab (ignoring padded columns), without gathering it.

    ``tp_group`` None: Megatron-Core's TP group when model parallel is initialised. Ties
    go to the lowest vocab id, as ``torch.argmax`` over the whole vocabulary would.
    """
    shard = VocabShard.of(resolve_tp_group(tp_group), logits.size(-1), vocab_size)
    logits = logits.float()
    valid = shard.n_valid
    if valid < shard.columns:
        logits = (
            logits[..., :valid] if valid > 0 else torch.full_like(logits[..., :1], float("-inf"))
        )
    value, index = logits.max(dim=-1)
    index = index + shard.offset
    if shard.world_size == 1:
        return index
    values = [torch.empty_like(value) for _ in range(shard.world_size)]
    indices = [torch.empty_like(index) for _ in range(shard.world_size)]
    dist.all_gather(values, value, group=shard.group)
    dist.all_gather(indices, index, group=shard.group)
    best = torch.stack(values).argmax(dim=0, keepdim=True)  # first max wins: lowest vocab id
    return torch.stack(indices).gather(0, best).squeeze(0)
