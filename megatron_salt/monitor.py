"""Run monitoring: a Megatron-style console line, ``{save}/metrics.jsonl`` and wandb.

``metrics.jsonl`` is the run's durable record (``tools/compare_runs.py`` reads
it): one JSON object per line with ``kind`` ("train", "eval" or "event"),
``iteration``, and the metrics under :func:`metric_key` names. Every launch
drops a last line cut short by a crash (so the new records never continue it);
on resume the records past the checkpoint's iteration are dropped as well, so a
crashed-and-resumed run reads like an uninterrupted one.

wandb is optional: runs log offline unless ``WANDB_API_KEY`` is set (or
``WANDB_MODE`` says otherwise), SALT and baseline runs of the same student
setup share a ``group``, and are tagged ``salt`` / ``baseline``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


def metric_key(name: str) -> str:
    """'time per iteration (ms)' -> 'time_per_iteration_ms'; 'tokens/s' -> 'tokens_per_s'."""
    name = name.lower().replace("/", " per ")
    return re.sub(r"[^a-z0-9]+", "_", name).strip("_")


class MetricsLog:
    """Append-only JSON-lines log of a run (written by one rank)."""

    def __init__(self, run_dir: str | Path | None, resume_iteration: int | None = None) -> None:
        self.path = Path(run_dir) / METRICS_FILE if run_dir else None
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self._repair(resume_iteration)

    def _repair(self, iteration: int | None) -> None:
        """Drop lines cut short by a crash (every launch), and records past ``iteration``."""
        text = self.path.read_text()
        kept = []
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
            if iteration is None or record.get("iteration", 0) <= iteration:
                kept.append(line)
        if "".join(k + "\n" for k in kept) == text:
            return
        tmp = self.path.with_suffix(".jsonl.tmp")
        try:
            tmp.write_text("".join(k + "\n" for k in kept))
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def write(self, kind: str, iteration: int, values: dict[str, Any]) -> None:
        if self.path is None:
            return
        record = {"kind": kind, "iteration": iteration, "time": time.time()}
        record.update({metric_key(k): _jsonable(v) for k, v in values.items()})
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class WandbLog:
    """Thin wrapper: a no-op unless ``--wandb-project`` is given."""

    def __init__(
        self,
        *,
        project: str | None,
        name: str | None,
        group: str | None,
        tags: list[str],
        save_dir: str | None,
        config: dict[str, Any],
    ) -> None:
        self.run = None
        if not project:
            return
        import wandb

        mode = os.environ.get("WANDB_MODE") or (
            "online" if os.environ.get("WANDB_API_KEY") else "offline"
        )
        if save_dir:
            Path(save_dir).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=project,
            name=name,
            group=group,
            tags=tags,
            dir=save_dir,
            config=config,
            mode=mode,
            reinit=True,
        )
        logger.info("wandb: project %s, run %s, group %s, mode %s", project, name, group, mode)

    def log(self, values: dict[str, Any], step: int) -> None:
        values = {k: v for k, v in values.items() if v is not None}
        if self.run is not None and values:
            self.run.log(values, step=step)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


#: How an event record shows in wandb (its metrics.jsonl record is the whole event).
WANDB_EVENTS = {"kd_end": "kd/teacher_released"}


def wandb_view(kind: str, record: dict[str, Any]) -> dict[str, Any]:
    """A metrics.jsonl record as the wandb row ``report.read_wandb_run`` reads back.

    ``train/<name>`` for training records, ``valid/<name>`` for evaluations (their
    train time is the training records'), ``kd/teacher_released`` for the KD phase's end;
    the run header is wandb's config already.
    """
    if kind == "train":
        return {f"train/{k}": v for k, v in record.items()}
    if kind == "eval":
        return {f"valid/{k}": v for k, v in record.items() if k != "train time (s)"}
    if kind == "event" and record.get("event") in WANDB_EVENTS:
        return {WANDB_EVENTS[record["event"]]: 1}
    return {}


class RunLog:
    """Where a run's records go: the console, ``metrics.jsonl`` and wandb, from one call.

    Only the logging rank writes; on every other rank each call does nothing.
    """

    def __init__(self, metrics: MetricsLog, wandb: WandbLog, *, enabled: bool) -> None:
        self.metrics, self.wandb, self.enabled = metrics, wandb, enabled

    def write(
        self, kind: str, iteration: int, record: dict[str, Any], *, console: str | None = None
    ) -> None:
        if not self.enabled:
            return
        if console is not None:
            print(console, flush=True)
        self.metrics.write(kind, iteration, record)
        self.wandb.log(wandb_view(kind, record), step=iteration)

    def finish(self) -> None:
        self.wandb.finish()


def console_line(iteration: int, train_iters: int, values: dict[str, Any]) -> str:
    """One Megatron-style line: ``iteration  10/ 100 | name: value | ...``."""
    parts = [f" [{time.strftime('%Y-%m-%d %H:%M:%S')}] iteration {iteration:8d}/{train_iters:8d}"]
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, float):
            text = f"{value:.6E}" if ("loss" in name or name == "learning rate") else f"{value:.4g}"
        else:
            text = str(value)
        parts.append(f"{name}: {text}")
    return " | ".join(parts) + " |"


def format_eta(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rem = divmod(seconds, 3600)
    minutes, secs = divmod(rem, 60)
    return f"{hours:d}:{minutes:02d}:{secs:02d}"
