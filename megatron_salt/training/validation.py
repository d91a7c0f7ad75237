"""Validation during training: the LM loss (no KD) on the same ``--eval-iters`` batches each
time, every ``--eval-interval`` steps and after the last step."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from megatron.core import parallel_state

from megatron_salt.compat import current_device as device
from megatron_salt.monitor import RunLog
from megatron_salt.training.data import BatchLayout, microbatches
from megatron_salt.training.step import ForwardStep, reduce_reports

#: ``(forward_step, micro-batches, forward_only=...) -> the loss_func reports``
RunSchedule = Callable[..., list[dict]]


class Validation:
    def __init__(
        self,
        dataset,
        layout: BatchLayout,
        *,
        eval_iters: int,
        eval_interval: int,
        train_iters: int,
        run_log: RunLog,
    ) -> None:
        self.dataset = dataset
        self.layout = layout
        self.eval_iters = eval_iters
        self.eval_interval = eval_interval
        self.train_iters = train_iters
        self.run_log = run_log

    def due(self, iteration: int) -> bool:
        if not self.eval_iters:
            return False
        return iteration % self.eval_interval == 0 or iteration == self.train_iters

    @torch.no_grad()
    def run(
        self,
        model: torch.nn.Module,
        run_schedule: RunSchedule,
        *,
        iteration: int,
        train_time_s: float,
    ) -> float | None:
        """The validation loss (on the last pipeline stage; None elsewhere), logged."""
        model.eval()
        reports = []
        for step in range(self.eval_iters):
            batches = microbatches(self.dataset, self.layout, step, device())
            reports += run_schedule(ForwardStep(), batches, forward_only=True)
        model.train()
        values = (
            reduce_reports(reports, parallel_state.get_data_parallel_group())
            if parallel_state.is_pipeline_last_stage()
            else {}
        )
        loss = values.get("lm loss")
        if self.run_log.enabled:
            ppl = math.exp(min(loss, 30.0))
            self.run_log.write(
                "eval",
                iteration,
                {"lm loss": loss, "train time (s)": train_time_s},
                console=f" validation loss at iteration {iteration} | lm loss: {loss:.6E} "
                f"| lm loss PPL: {ppl:.6E} |",
            )
        return loss
