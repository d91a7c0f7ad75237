"""The training log: every ``--log-interval`` steps, the averages of the steps since the last.

Each step adds its numbers (losses reduced over micro-batches and data-parallel ranks,
timings, the gradient norm); when the interval is due, :meth:`TrainLog.line` turns
them into the Megatron-style console line and the ``metrics.jsonl`` / wandb record.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from megatron_salt.monitor import console_line, format_eta


@dataclass
class StepResult:
    """What one optimizer step reports (values from the last pipeline stage)."""

    losses: dict[str, float]  # "lm loss", "kd loss", ...: means over the step's tokens
    step_time_s: float
    teacher_time_s: float
    grad_norm: float | None
    update_ok: bool
    kd_weight: float


class TrainLog:
    """Averages over the steps of one logging interval; due every ``log_interval`` steps."""

    def __init__(
        self,
        log_interval: int,
        *,
        train_iters: int,
        global_batch_size: int,
        seq_length: int,
        start_iteration: int,
        kd_enabled: bool,
    ) -> None:
        self.log_interval = log_interval
        self.train_iters = train_iters
        self.global_batch_size = global_batch_size
        self.seq_length = seq_length
        self.start_iteration = start_iteration
        self.kd_enabled = kd_enabled
        self._steps: dict[str, list[float]] = defaultdict(list)

    def due(self, iteration: int) -> bool:
        """Is there a line after ``iteration`` steps? (The step before it measures more.)"""
        return iteration % self.log_interval == 0

    def add(self, step: StepResult) -> None:
        for name, value in step.losses.items():
            self._steps[name].append(value)
        self._steps["step time"].append(step.step_time_s)
        self._steps["teacher time"].append(step.teacher_time_s)
        self._steps["grad norm"].append(
            step.grad_norm if step.grad_norm is not None else float("nan")
        )
        self._steps["skipped"].append(0.0 if step.update_ok else 1.0)
        self._steps["kd weight"].append(step.kd_weight)

    def line(
        self,
        iteration: int,
        *,
        learning_rate: float,
        train_time_s: float,
        with_teacher: bool,
    ) -> tuple[str, dict[str, Any]]:
        """``(console line, record)`` for the interval ending at ``iteration``; starts the next."""
        steps = self._steps

        def mean(name: str) -> float | None:
            vals = [v for v in steps.get(name, []) if not math.isnan(v)]
            return sum(vals) / len(vals) if vals else None

        step_time = mean("step time")
        tokens = self.global_batch_size * self.seq_length
        eta = step_time * (self.train_iters - iteration) if step_time else 0.0
        teacher_share = (
            (sum(steps["teacher time"]) / sum(steps["step time"])) if with_teacher else None
        )
        values: dict[str, Any] = {
            "consumed samples": iteration * self.global_batch_size,
            "elapsed time per iteration (ms)": step_time * 1000,
            "tokens/s": tokens / step_time,
            "learning rate": learning_rate,
            "global batch size": self.global_batch_size,
            "lm loss": mean("lm loss"),
            "kd loss": mean("kd loss"),
            "kd weight": mean("kd weight") if self.kd_enabled else None,
            "total loss": mean("total loss"),
            "teacher lm loss": mean("teacher lm loss"),
            "top1 agreement": mean("top1 agreement"),
            "grad norm": mean("grad norm"),
            "teacher time share": teacher_share,
            "skipped iterations": int(sum(steps["skipped"])),
            "eta": format_eta(eta),
        }
        record = {k: v for k, v in values.items() if k != "eta" and v is not None}
        record["train time (s)"] = train_time_s
        record["iterations this run"] = iteration - self.start_iteration
        steps.clear()
        return console_line(iteration, self.train_iters, values), record
