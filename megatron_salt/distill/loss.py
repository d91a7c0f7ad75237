"""The SALT training loss: ``(1 - w) * CE + w * KD`` over the loss mask, with its parts.

Megatron-Core's pipeline schedule accepts a ``loss_func`` returning
``(loss, num_tokens, report)`` and divides ``loss`` by the total token count across
microbatches (and data-parallel ranks) itself (``forward_step_calc_loss`` in
``megatron/core/pipeline_parallel/schedules.py``). So this module returns *sums* over
the masked tokens and the token count, never means; ``*_mean`` properties exist for
logging and single-process use.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["SaltLossParts", "combine_salt_loss"]


@dataclass
class SaltLossParts:
    """Summed loss terms of one microbatch over its masked tokens."""

    total_sum: torch.Tensor  # differentiable: sum of (1 - w) * CE + w * KD; shares no storage
    lm_sum: torch.Tensor  # detached: sum of CE
    kd_sum: torch.Tensor  # detached: sum of KD (0 when there is no KD term)
    num_tokens: torch.Tensor  # int scalar: loss_mask.sum()

    def _mean(self, value: torch.Tensor) -> torch.Tensor:
        return value / self.num_tokens.clamp(min=1)

    @property
    def total_mean(self) -> torch.Tensor:
        return self._mean(self.total_sum)

    @property
    def lm_mean(self) -> torch.Tensor:
        return self._mean(self.lm_sum)

    @property
    def kd_mean(self) -> torch.Tensor:
        return self._mean(self.kd_sum)


def combine_salt_loss(
    lm_loss: torch.Tensor,
    kd_loss: torch.Tensor | None,
    loss_mask: torch.Tensor,
    kd_weight: float,
) -> SaltLossParts:
    """Mask and mix per-token CE and KD: ``total = sum(mask * ((1 - w) * CE + w * KD))``.

    Args:
        lm_loss: per-token CE, any shape (the caller aligns ``[b, s]`` vs ``[s, b]``).
        kd_loss: per-token KD of the same shape, or ``None`` (stage 2 / no teacher).
        loss_mask: same shape; bool or 0/1 numbers.
        kd_weight: ``w`` in [0, 1]. With ``w == 0`` or ``kd_loss is None`` the KD term is
            not touched at all, so a missing or NaN KD cannot leak in as ``0 * NaN``.

    Masked-out tokens are removed with ``torch.where`` rather than multiplied by 0 for the
    same reason (a NaN CE at a padding position must not poison the sum).
    """
    if not (0.0 <= kd_weight <= 1.0):
        raise ValueError(f"combine_salt_loss: kd_weight must be in [0, 1], got {kd_weight}")
    shapes = {"lm_loss": lm_loss.shape, "loss_mask": loss_mask.shape}
    if kd_loss is not None:
        shapes["kd_loss"] = kd_loss.shape
    if len(set(shapes.values())) != 1:
        described = ", ".join(f"{name} {tuple(shape)}" for name, shape in shapes.items())
        raise ValueError(f"combine_salt_loss: per-token shapes differ: {described}")

    keep = loss_mask.bool()
    lm_masked = torch.where(keep, lm_loss.float(), 0.0)
    num_tokens = keep.sum().to(torch.int)
    lm_sum = lm_masked.sum()
    if kd_loss is None or kd_weight == 0.0:
        # The one copy: Megatron's schedule divides the returned loss in place, and the
        # logged CE must not move with it.
        return SaltLossParts(
            total_sum=lm_sum.clone(),
            lm_sum=lm_sum.detach(),
            kd_sum=torch.zeros((), dtype=torch.float32, device=lm_sum.device),
            num_tokens=num_tokens,
        )
    kd_sum = torch.where(keep, kd_loss.float(), 0.0).sum()
    total_sum = (1.0 - kd_weight) * lm_sum + kd_weight * kd_sum
    return SaltLossParts(
        total_sum=total_sum,  # a new tensor: dividing it in place moves neither part
        lm_sum=lm_sum.detach(),
        kd_sum=kd_sum.detach(),
        num_tokens=num_tokens,
    )
