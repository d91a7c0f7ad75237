"""Knowledge distillation for SALT: the KD (and fused CE + KD) loss, vocab shards and the
teacher->student alignment, the KD weight schedule."""

from megatron_salt.distill.kd_loss import vocab_parallel_kd_loss, vocab_parallel_salt_loss
from megatron_salt.distill.loss import SaltLossParts, combine_salt_loss
from megatron_salt.distill.schedule import KD_SCHEDULES, kd_weight
from megatron_salt.distill.shard import VocabShard
from megatron_salt.distill.vocab import (
    check_vocab_compatible,
    teacher_logits_to_student_shard,
    vocab_parallel_argmax,
)

__all__ = [
    "KD_SCHEDULES",
    "SaltLossParts",
    "VocabShard",
    "check_vocab_compatible",
    "combine_salt_loss",
    "kd_weight",
    "teacher_logits_to_student_shard",
    "vocab_parallel_kd_loss",
    "vocab_parallel_argmax",
    "vocab_parallel_salt_loss",
]
