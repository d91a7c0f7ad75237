"""The ``forward_step_func`` and ``loss_func`` handed to Megatron-Core's pipeline schedules.

On the student's last stage the loss is ``(1-w)*CE + w*KD`` (SALT), with both
terms computed in one pass over the vocab-parallel logits
(``vocab_parallel_salt_loss``); ``w = 0`` or no teacher is plain next-token
prediction with Megatron-Core's CE. Everything returned in the report dictionary is a
``[sum, count]`` pair so the trainer can average over micro-batches and
data-parallel ranks exactly.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.distributed as dist
from megatron.core import tensor_parallel

from megatron_salt.config import KDConfig
from megatron_salt.distill import (
    combine_salt_loss,
    vocab_parallel_argmax,
    vocab_parallel_kd_loss,
    vocab_parallel_salt_loss,
)
from megatron_salt.teacher import Teacher


@dataclass
class StepTimes:
    """Time the teacher's share of a step (``synchronize``: make GPU timings honest, at
    the cost of one device synchronisation per micro-batch)."""

    teacher_s: float = 0.0
    synchronize: bool = False

    def now(self) -> float:
        if self.synchronize and torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()


@dataclass
class ForwardStep:
    """Callable passed as ``forward_step_func`` to ``get_forward_backward_func()``.

    Without ``teacher``: next-token prediction. With it: the teacher runs on each
    micro-batch and the loss is ``(1-w)*CE + w*KD`` with ``w = weight`` and the run's
    ``kd`` settings (temperature, top-k); ``measure`` also reports the teacher's LM loss
    and its top-1 agreement with the student.
    """

    teacher: Teacher | None = None
    kd: KDConfig | None = None
    vocab_size: int | None = None  # true vocab size: padded columns carry no probability
    weight: float = 0.0
    measure: bool = False
    times: StepTimes = field(default_factory=StepTimes)

    def __call__(self, data_iterator: Iterator[dict[str, torch.Tensor]], model: torch.nn.Module):
        batch = next(data_iterator)
        teacher_logits = None
        if self.teacher is not None:
            start = self.times.now()
            teacher_logits = self.teacher.forward(batch)
            self.times.teacher_s += self.times.now() - start
        logits = model(
            batch["tokens"],
            batch["position_ids"],
            batch.get("attention_mask"),
            labels=batch["labels"],
        )
        return logits, partial(self.loss, batch, teacher_logits)

    def loss(
        self,
        batch: dict[str, torch.Tensor],
        teacher_logits: torch.Tensor | None,
        logits: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """``logits``: ``[s, b, v/tp]`` from :class:`SaltGPTModel` on the last stage."""
        labels = batch["labels"].t().contiguous()
        loss_mask = batch["loss_mask"].t().float()
        lm_loss = kd_loss = None
        measures = {}
        if teacher_logits is not None:
            kd = self.kd
            if self.weight > 0.0:
                # One pass over the logits gives both terms, with no copy of them. Its CE
                # excludes padded vocab columns (no probability, as in the KD term).
                lm_loss, kd_loss = vocab_parallel_salt_loss(
                    logits,
                    teacher_logits,
                    labels,
                    vocab_size=self.vocab_size,
                    temperature=kd.temperature,
                    top_k=kd.top_k,
                )
            else:
                # w == 0: the teacher is only measured. The CE below stays Megatron's, so
                # a run with --kd-alpha 0 trains bitwise like one without a teacher; the
                # KD value is reported, never differentiated (nothing kept for backward).
                with torch.no_grad():
                    kd_loss = vocab_parallel_kd_loss(
                        logits,
                        teacher_logits,
                        vocab_size=self.vocab_size,
                        temperature=kd.temperature,
                        top_k=kd.top_k,
                    )
            if self.measure:  # before Megatron's CE, which rewrites fp32 logits in place
                measures = _teacher_measures(
                    logits, teacher_logits, labels, loss_mask, self.vocab_size
                )
        if lm_loss is None:
            lm_loss = tensor_parallel.vocab_parallel_cross_entropy(logits, labels)
        parts = combine_salt_loss(lm_loss, kd_loss, loss_mask, self.weight)
        count = parts.num_tokens.detach().float()
        report = {
            "lm loss": torch.stack([parts.lm_sum.float(), count]),
            "total loss": torch.stack([parts.total_sum.detach().float(), count]),
            **measures,
        }
        if kd_loss is not None:
            report["kd loss"] = torch.stack([parts.kd_sum.float(), count])
        # The schedule divides total_sum in place; it shares no storage with the report.
        return parts.total_sum, parts.num_tokens, report


@torch.no_grad()
def _teacher_measures(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    loss_mask: torch.Tensor,
    vocab_size: int,
) -> dict[str, torch.Tensor]:
    teacher_ce = tensor_parallel.vocab_parallel_cross_entropy(
        teacher_logits.detach().to(torch.float32, copy=True), labels
    )
    agree = (
        vocab_parallel_argmax(student_logits.detach(), vocab_size)
        == vocab_parallel_argmax(teacher_logits.detach(), vocab_size)
    ).float()
    count = loss_mask.sum()
    return {
        "teacher lm loss": torch.stack([(teacher_ce * loss_mask).sum(), count]),
        "top1 agreement": torch.stack([(agree * loss_mask).sum(), count]),
    }


def reduce_reports(
    reports: list[dict[str, torch.Tensor]], group: dist.ProcessGroup | None
) -> dict[str, float]:
    """Average ``[sum, count]`` reports over micro-batches and the data-parallel group."""
    if not reports:
        return {}
    keys = sorted(reports[0])
    totals = torch.stack([sum(r[k] for r in reports) for k in keys]).double()
    if group is not None and dist.get_world_size(group) > 1:
        dist.all_reduce(totals, group=group)
    return {
        k: (s / c).item() if c > 0 else float("nan") for k, (s, c) in zip(keys, totals, strict=True)
    }
