"""lm-evaluation-harness on a HuggingFace model directory, through its Python API.

We call ``lm_eval.simple_evaluate(model="hf", ...)`` exactly as its own ``lm-eval run --model
hf`` does (same defaults: seeds, bootstrap iterations, no chat template), so a number written
by ``tools/evaluate.py`` is the number lm-eval's command line gives on the exported model.
lm-eval is imported only here and only when called: the package installs without it
(``pip install -e .[eval]`` adds it).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megatron_salt.evaluation.results import EvalError, EvalSettings, now_utc, primary_metric

INSTALL_HINT = "tools/evaluate.py needs lm-eval: pip install -e .[eval]"


def require_lm_eval():
    """The ``lm_eval`` module, or an :class:`EvalError` saying how to install it."""
    os.environ.setdefault("LMEVAL_LOG_LEVEL", "WARNING")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # as lm-eval's CLI sets it
    try:
        import accelerate  # noqa: F401  (lm-eval's HF backend imports it; lm-eval omits it)
        import lm_eval
        import transformers  # noqa: F401
    except ImportError as err:
        raise EvalError(f"{INSTALL_HINT} ({err.name or err} is missing)") from None
    return lm_eval


@dataclass(frozen=True)
class HarnessConfig:
    """How lm-eval runs (the settings that are not part of a result's identity)."""

    batch_size: int | str = 16
    device: str = "cpu"
    include_path: tuple[str, ...] = ()


def task_manager(include_path: Sequence[str | Path] = (), tasks: Sequence[str] = ()):
    """lm-eval's registry of tasks, with the YAML directories in ``include_path``.

    When ``include_path`` has all of ``tasks``, lm-eval's own ~200 task directories are
    not indexed (that takes seconds); the tasks and their numbers are the same.
    """
    require_lm_eval()
    from lm_eval.tasks import TaskManager

    for path in include_path:
        if not Path(path).is_dir():
            raise EvalError(f"--include-path {path}: no such directory")
    paths = [str(p) for p in include_path]
    if paths and tasks:
        local = TaskManager(include_path=paths, include_defaults=False)
        if all(local.match_tasks([t]) for t in tasks):
            return local
    return TaskManager(include_path=paths or None)


def resolve_tasks(tasks: Sequence[str], manager) -> list[str]:
    """Task and group names as lm-eval reports results under them: glob patterns matched,
    a tag replaced by its tasks (a tag has no result of its own). A name lm-eval does not
    know is an :class:`EvalError` naming it."""
    out: list[str] = []
    for name in tasks:
        matches = manager.match_tasks([name])
        if not matches:
            raise EvalError(
                f"--tasks: lm-eval knows no task {name!r} (see `lm-eval ls tasks`; "
                "local YAML tasks need --include-path DIR)"
            )
        for match in matches:
            if match in manager.all_tags:
                members = [e.name for e in manager.task_index.values() if match in e.tags]
                out.extend(sorted(members))
            else:
                out.append(match)
    return list(dict.fromkeys(out))


def _metric_key(key: str) -> str:
    """lm-eval's "acc,none" -> "acc"; a filtered metric keeps its filter ("exact_match,flex")."""
    name, _, filter_name = key.partition(",")
    return name if filter_name in ("", "none") else key


def entries_from_results(
    results: dict[str, Any], settings: EvalSettings, harness: HarnessConfig, seconds: float
) -> dict[str, dict[str, Any]]:
    """lm-eval's result dictionary -> one results-file entry per task (and group)."""
    import lm_eval

    entries = {}
    for task, values in results["results"].items():
        metrics = {
            _metric_key(k): v
            for k, v in values.items()
            if k not in ("alias", "sample_len")
            and isinstance(v, (int, float))
            and not isinstance(v, bool)
        }
        # An "N/A" stderr (a group, one document) is not a number: keep it out.
        higher = {
            _metric_key(k): bool(v)
            for k, v in results.get("higher_is_better", {}).get(task, {}).items()
        }
        samples = results.get("n-samples", {}).get(task)
        entries[task] = {
            "metrics": metrics,
            "higher_is_better": higher,
            "primary_metric": primary_metric(metrics, higher),
            "version": results.get("versions", {}).get(task),
            "num_fewshot": results.get("n-shot", {}).get(task),
            "requested_num_fewshot": settings.num_fewshot,
            "limit": settings.limit,
            "samples": samples,
            "dtype": settings.dtype,
            "device": harness.device,
            "batch_size": str(harness.batch_size),
            "lm_eval_version": lm_eval.__version__,
            "evaluated_at": now_utc(),
            "seconds": round(seconds, 2),
        }
    return entries


def evaluate_hf_dir(
    hf_dir: str | Path,
    tasks: Sequence[str],
    settings: EvalSettings,
    harness: HarnessConfig,
    manager=None,
) -> dict[str, Any]:
    """lm-eval's results dictionary for ``tasks`` on the HF model in ``hf_dir``."""
    lm_eval = require_lm_eval()
    manager = manager or task_manager(harness.include_path)
    results = lm_eval.simple_evaluate(
        model="hf",
        model_args={"pretrained": str(hf_dir), "dtype": settings.dtype},
        tasks=list(tasks),
        num_fewshot=settings.num_fewshot,
        batch_size=harness.batch_size,
        device=harness.device,
        limit=settings.limit,
        task_manager=manager,
        log_samples=False,
    )
    if results is None:  # only on non-zero ranks of a distributed lm-eval run
        raise EvalError("lm-eval returned no results")
    return results
