"""What the comparison knows of a run, however it was logged: :class:`Run` and its points."""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The "run" header fields the comparison uses (``Trainer._run_header``; the same names
# are argparse dests, so a wandb run's config carries them too).
SETTINGS_KEYS = (
    "train_iters",
    "global_batch_size",
    "seq_length",
    "kd_teacher_load",
    "kd_iters",
    "kd_alpha",
    "kd_temperature",
    "kd_top_k",
    "kd_schedule",
    "kd_data_path",
    "kd_data_selection",
)


_KD_ONLY_KEYS = ("kd_alpha", "kd_temperature", "kd_schedule")  # None in a baseline's header


class ReportError(ValueError):
    """Bad or unusable input; the message is one line naming the file (and line)."""


@dataclass(frozen=True)
class Point:
    """One logged value: at ``iteration``, after ``train_time_s`` of training."""

    iteration: int
    value: float  # NaN where the run logged a non-finite value
    train_time_s: float | None


@dataclass
class Run:
    """What the comparison needs from one run, however it was logged."""

    name: str
    mode: str | None  # "salt" | "baseline" | None (no run header)
    source: str
    settings: dict[str, Any] = field(default_factory=dict)
    val_loss: list[Point] = field(default_factory=list)
    train_loss: list[Point] = field(default_factory=list)
    kd_weight: list[Point] = field(default_factory=list)
    kd_end: int | None = None  # iteration at which the teacher was released
    run_dir: Path | None = None  # where eval/ (few-shot results) would be

    @property
    def final_val(self) -> Point:
        return self.val_loss[-1]

    @property
    def last_iteration(self) -> int:
        return max(p.iteration for p in self.val_loss + self.train_loss)

    @property
    def kd_phase_end(self) -> int | None:
        """Step at which the KD phase ended: the teacher-release event, else ``kd_iters``."""
        if self.mode != "salt":
            return None
        if self.kd_end is not None:
            return self.kd_end
        kd_iters = self.settings.get("kd_iters") or 0
        return min(kd_iters, self.last_iteration) if kd_iters > 0 else None

    def time_at(self, iteration: float) -> float | None:
        """Training wall-clock at ``iteration``, interpolated between logged points."""
        known = sorted(
            {
                (p.iteration, p.train_time_s)
                for p in self.val_loss + self.train_loss
                if p.train_time_s is not None
            }
        )
        if not known:
            return None
        return _interp(iteration, [(0, 0.0)] + known)


def _interp(x: float, points: Sequence[tuple[float, float]]) -> float:
    """Piecewise-linear through ``points`` (sorted by x, at least two); the last segment
    extends past the end."""
    index = min(max(bisect.bisect_left([p[0] for p in points], x), 1), len(points) - 1)
    (x0, y0), (x1, y1) = points[index - 1], points[index]
    return y1 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def _as_float(value: Any) -> float:
    """Logged number -> float; None (metrics.jsonl) or "NaN"/"Infinity" (wandb) -> NaN."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    value = float(value)
    return value if math.isfinite(value) else math.nan


def _optional_float(value: Any) -> float | None:
    value = _as_float(value)
    return None if math.isnan(value) else value
