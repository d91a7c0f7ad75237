"""Knowledge distillation for SALT: the KD loss, vocab alignment, the KD weight schedule."""

from megatron_salt.distill.schedule import KD_SCHEDULES, kd_weight

__all__ = ["KD_SCHEDULES", "kd_weight"]
