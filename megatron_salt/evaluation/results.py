"""The evaluation results a run keeps: ``RUN_DIR/eval/iter_NNNNNNN.json``, one per iteration.

The file name has the checkpoint's own seven-digit iteration (``iter_0000200.json`` for
``iter_0000200/``). A file holds one entry per task, each with the settings it was evaluated
with, so evaluating other tasks later adds entries, and a task already evaluated with the same
settings is skipped (the resume of ``tools/evaluate.py``). Files are replaced atomically.

Reading needs neither lm-eval nor torch (``compare_runs.py`` reads these anywhere)::

    {
      "schema": 1,
      "iteration": 200,
      "checkpoint": "/abs/run/iter_0000200",
      "tasks": {
        "salt_lastword": {
          "metrics": {"acc": 0.21, "acc_stderr": 0.02, "perplexity": 310.5, ...},
          "higher_is_better": {"acc": true, "perplexity": false},
          "primary_metric": "acc",
          "version": 1.0,
          "num_fewshot": 1,          # the n-shot lm-eval used
          "requested_num_fewshot": 1, # --num-fewshot (null: the task's default)
          "limit": 100,               # --limit (null: all documents)
          "samples": {"original": 412, "effective": 100},
          "dtype": "float32", "device": "cpu", "batch_size": "16",
          "lm_eval_version": "0.4.13", "evaluated_at": "2026-11-30T05:40:00+00:00",
          "seconds": 3.1
        }
      }
    }
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

SCHEMA = 1
EVAL_DIR = "eval"
_FILE_RE = re.compile(r"^iter_(\d{7,})\.json$")

# Which metric stands for a task in averages and tables, in order of preference; a task
# with none of these uses its first higher-is-better metric.
PRIMARY_METRICS = ("acc", "exact_match", "f1", "mcc")


class EvalError(ValueError):
    """Bad input for an evaluation; the message is one line naming the file, flag or task."""


@dataclass(frozen=True)
class EvalSettings:
    """What makes two evaluations of a task comparable (the resume key).

    Batch size and device are recorded but not part of it: they change results only in the
    last bits of floating point.
    """

    num_fewshot: int | None = None  # None: the task's own default
    limit: int | float | None = None  # None: every document
    dtype: str = "float32"

    def matches(self, entry: dict[str, Any]) -> bool:
        return (
            entry.get("requested_num_fewshot") == self.num_fewshot
            and entry.get("limit") == self.limit
            and entry.get("dtype") == self.dtype
        )


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def eval_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / EVAL_DIR


def result_path(run_dir: str | Path, iteration: int) -> Path:
    return eval_dir(run_dir) / f"iter_{iteration:07d}.json"


def read_result(path: str | Path) -> dict[str, Any]:
    """One results file, checked enough that a reader can trust its shape."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise EvalError(f"{path}: cannot read: {err}") from None
    except json.JSONDecodeError as err:
        raise EvalError(f"{path}: not JSON ({err})") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise EvalError(f"{path}: not an evaluation result (schema {SCHEMA})")
    if not isinstance(data.get("iteration"), int) or not isinstance(data.get("tasks"), dict):
        raise EvalError(f"{path}: needs an integer 'iteration' and a 'tasks' object")
    for task, entry in data["tasks"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("metrics"), dict):
            raise EvalError(f"{path}: task {task!r} has no 'metrics' object")
    return data


def read_run_results(run_dir: str | Path) -> dict[int, dict[str, Any]]:
    """Every ``eval/iter_*.json`` of a run, by iteration (empty without an eval directory)."""
    directory = eval_dir(run_dir)
    if not directory.is_dir():
        return {}
    out: dict[int, dict[str, Any]] = {}
    for path in sorted(directory.iterdir()):
        match = _FILE_RE.match(path.name)
        if match:
            data = read_result(path)
            if data["iteration"] != int(match.group(1)):
                raise EvalError(f"{path}: holds iteration {data['iteration']}")
            out[data["iteration"]] = data
    return out


def pending_tasks(
    run_dir: str | Path, iteration: int, tasks: Iterable[str], settings: EvalSettings
) -> list[str]:
    """The tasks of ``tasks`` not yet evaluated at ``iteration`` with ``settings``."""
    path = result_path(run_dir, iteration)
    done = read_result(path)["tasks"] if path.is_file() else {}
    return [t for t in tasks if not (t in done and settings.matches(done[t]))]


def primary_metric(metrics: dict[str, Any], higher_is_better: dict[str, Any]) -> str | None:
    for name in PRIMARY_METRICS:
        if name in metrics:
            return name
    for name, better in higher_is_better.items():
        if better and name in metrics:
            return name
    return None


def write_task_results(
    run_dir: str | Path, iteration: int, checkpoint: str | Path, entries: dict[str, dict]
) -> Path:
    """Merge ``entries`` (task -> entry) into the iteration's file, atomically."""
    path = result_path(run_dir, iteration)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (
        read_result(path)
        if path.is_file()
        else {"schema": SCHEMA, "iteration": iteration, "checkpoint": None, "tasks": {}}
    )
    data["checkpoint"] = str(Path(checkpoint).resolve())
    data["tasks"].update(entries)
    data["tasks"] = dict(sorted(data["tasks"].items()))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, allow_nan=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
