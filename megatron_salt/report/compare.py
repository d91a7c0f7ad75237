"""The comparison: where each run first reaches the baseline's final validation loss.

The paper's headline number: the fraction of the baseline's steps (and training
wall-clock) at which a SALT run first evaluates at or below the baseline's *final*
validation loss.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from megatron_salt.report.run import Point, ReportError, Run


def disambiguate_names(runs: Sequence[Run]) -> None:
    """Suffix " #2", " #3" to repeated run names, so the table and legend tell them apart."""
    seen: Counter[str] = Counter()
    for run in runs:
        seen[run.name] += 1
        if seen[run.name] > 1:
            run.name = f"{run.name} #{seen[run.name]}"


def pick_baseline(runs: Sequence[Run], baseline: Run | None = None) -> Run:
    """``baseline`` if given, else the one run whose mode is "baseline"."""
    if baseline is not None:
        return baseline
    candidates = [r for r in runs if r.mode == "baseline"]
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise ReportError(
            f"no baseline among the {len(runs)} runs (none logged mode 'baseline'): "
            "name one with --baseline RUN_DIR"
        )
    raise ReportError(
        f"{len(candidates)} baseline runs ({', '.join(r.source for r in candidates)}): "
        "pick one with --baseline RUN_DIR"
    )


def first_reach(run: Run, target: float) -> Point | None:
    """The first validation evaluation at or below ``target`` (no interpolation)."""
    for point in run.val_loss:
        if point.value <= target:  # NaN never reaches
            return point
    return None


@dataclass(frozen=True)
class Comparison:
    """One table row: a run against the baseline."""

    run: Run
    is_baseline: bool
    final_val_loss: float
    delta: float  # final_val_loss - the baseline's (negative: better)
    reach: Point | None  # first eval at/below the baseline's final val loss
    step_fraction: float | None
    time_fraction: float | None


def compare(runs: Sequence[Run], baseline: Run) -> list[Comparison]:
    target = baseline.final_val.value
    if math.isnan(target):
        raise ReportError(f"{baseline.source}: the baseline's final validation loss is not finite")
    base_steps = baseline.final_val.iteration
    base_time = baseline.final_val.train_time_s
    rows = []
    for run in runs:
        reach = first_reach(run, target)
        step_fraction = time_fraction = None
        if reach is not None:
            step_fraction = reach.iteration / base_steps if base_steps else None
            if reach.train_time_s is not None and base_time:
                time_fraction = reach.train_time_s / base_time
        rows.append(
            Comparison(
                run=run,
                is_baseline=run is baseline,
                final_val_loss=run.final_val.value,
                delta=run.final_val.value - target,
                reach=reach,
                step_fraction=step_fraction,
                time_fraction=time_fraction,
            )
        )
    return rows


def comparability_warnings(runs: Iterable[Run], baseline: Run) -> list[str]:
    """Differences that make step counts incomparable (tokens per step)."""
    warnings = []
    for run in runs:
        for key in ("global_batch_size", "seq_length"):
            mine, theirs = run.settings.get(key), baseline.settings.get(key)
            if run is not baseline and mine and theirs and mine != theirs:
                warnings.append(
                    f"{run.name} has {key} {mine} vs the baseline's {theirs}: "
                    "a step is not the same amount of data"
                )
    return warnings
