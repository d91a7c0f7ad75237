"""KD weight schedule: how much of the loss is distillation at a given optimizer step.

SALT (Rawat et al. 2024) trains on ``(1 - w) * CE + w * KD`` for the first ``kd_iters``
steps and on plain CE afterwards. The paper's main runs switch ``w`` off in one step;
it also mentions linear transitions. All schedules here start at ``alpha`` and are
exactly 0 from ``kd_iters`` on, so the teacher can be dropped at that step whatever
the schedule.
"""

from __future__ import annotations

import math

KD_SCHEDULES = ("constant", "linear", "cosine")


def kd_weight(step: int, *, alpha: float, kd_iters: int, schedule: str = "constant") -> float:
    """KD weight ``w`` for the optimizer step ``step`` (0-based).

    - ``constant``: ``alpha`` while ``step < kd_iters`` (the paper's two-stage switch).
    - ``linear``: ``alpha * (1 - step / kd_iters)``, decaying towards 0.
    - ``cosine``: ``alpha * 0.5 * (1 + cos(pi * step / kd_iters))``.

    Every schedule returns 0.0 for ``step >= kd_iters`` (so ``kd_iters == 0`` disables KD).
    """
    if schedule not in KD_SCHEDULES:
        raise ValueError(f"unknown KD schedule {schedule!r}; expected one of {KD_SCHEDULES}")
    if not (0.0 <= alpha <= 1.0):  # also rejects NaN
        raise ValueError(f"KD weight alpha must be in [0, 1], got {alpha}")
    if kd_iters < 0:
        raise ValueError(f"kd_iters must be >= 0, got {kd_iters}")
    if step < 0:
        raise ValueError(f"step must be >= 0 (0-based optimizer step), got {step}")
    if step >= kd_iters:
        return 0.0
    if schedule == "constant":
        return float(alpha)
    progress = step / kd_iters
    if schedule == "linear":
        return float(alpha * (1.0 - progress))
    return float(alpha * 0.5 * (1.0 + math.cos(math.pi * progress)))
