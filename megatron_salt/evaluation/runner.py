"""The evaluation job: for each run and saved iteration, export -> lm-eval -> results file.

Each checkpoint goes through the HuggingFace export (:func:`megatron_salt.convert.hf.export_hf`)
into a temporary directory that is removed afterwards, and lm-eval's ``hf`` model reads it, so
the numbers are those of lm-eval's own command line on the same export. What is already in
``RUN_DIR/eval/`` with the same settings is skipped, so a rerun continues where it stopped.
"""

from __future__ import annotations

import re
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from megatron_salt.evaluation.harness import (
    HarnessConfig,
    entries_from_results,
    evaluate_hf_dir,
    task_manager,
)
from megatron_salt.evaluation.results import (
    EvalError,
    EvalSettings,
    pending_tasks,
    write_task_results,
)

_ITER_DIR = re.compile(r"^iter_(\d{7,})$")
EXPORT_DTYPES = {"float32": "fp32", "bfloat16": "bf16"}


@dataclass(frozen=True)
class EvalJob:
    """Tasks still to evaluate at one iteration of one run."""

    run_dir: Path
    iteration: int
    tasks: tuple[str, ...]


def saved_iterations(run_dir: str | Path) -> list[int]:
    """Iterations with a complete checkpoint (``iter_N/``, not ``iter_N.partial/``)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise EvalError(f"--load {run_dir}: no such directory")
    found = sorted(
        int(m.group(1))
        for p in run_dir.iterdir()
        if (m := _ITER_DIR.match(p.name)) and p.is_dir() and any(p.iterdir())
    )
    if not found:
        raise EvalError(f"--load {run_dir}: no saved iteration (iter_NNNNNNN/)")
    return found


def parse_iterations(spec: str | None) -> list[int] | None:
    """``--iterations``: "N,M,..." -> [N, M, ...]; "all" -> None (every saved one)."""
    if spec is None or spec == "all":
        return None
    try:
        values = [int(v) for v in spec.split(",") if v.strip()]
    except ValueError:
        raise EvalError(f"--iterations {spec!r}: expected N,M,... or all") from None
    if not values or min(values) < 0:
        raise EvalError(f"--iterations {spec!r}: expected N,M,... or all")
    return values


def select_iterations(
    run_dirs: Sequence[str | Path], iterations: str | None
) -> list[tuple[Path, list[int]]]:
    """``--iterations`` per run: None (each run's latest), "all", or "N,M" (each must be
    saved in every run). Checked before anything heavy is imported."""
    wanted = parse_iterations(iterations)
    out = []
    for run_dir in map(Path, run_dirs):
        saved = saved_iterations(run_dir)
        if iterations is None:
            chosen = saved[-1:]
        elif wanted is None:
            chosen = saved
        else:
            missing = [i for i in wanted if i not in saved]
            if missing:
                raise EvalError(
                    f"--load {run_dir}: no checkpoint at iteration {missing[0]} "
                    f"(saved: {', '.join(map(str, saved))})"
                )
            chosen = wanted
        out.append((run_dir, chosen))
    return out


def plan(
    selected: Sequence[tuple[Path, Sequence[int]]], tasks: Sequence[str], settings: EvalSettings
) -> tuple[list[EvalJob], int]:
    """The jobs still to do, and how many (run, iteration) pairs were already done."""
    jobs, done = [], 0
    for run_dir, iterations in selected:
        for iteration in iterations:
            todo = pending_tasks(run_dir, iteration, tasks, settings)
            if todo:
                jobs.append(EvalJob(run_dir, iteration, tuple(todo)))
            else:
                done += 1
    return jobs, done


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _summary(entries: dict) -> str:
    parts = []
    for task, entry in entries.items():
        metric = entry["primary_metric"]
        if metric is not None:
            parts.append(f"{task} {metric}={entry['metrics'][metric]:.4f}")
    return ", ".join(parts)


def run_jobs(
    jobs: Sequence[EvalJob],
    settings: EvalSettings,
    harness: HarnessConfig,
    *,
    tmp_dir: str | Path | None = None,
    manager=None,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> list[Path]:
    """Evaluate every job; return the results files written."""
    from megatron_salt.convert.hf import export_hf

    manager = manager or task_manager(harness.include_path, [t for j in jobs for t in j.tasks])
    written, start = [], time.perf_counter()
    for n, job in enumerate(jobs, start=1):
        where = f"[{n}/{len(jobs)}] {job.run_dir} iter {job.iteration}"
        log(f"evaluate: {where}: export + {','.join(job.tasks)}")
        job_start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="salt-eval-", dir=tmp_dir) as tmp:
            hf_dir = Path(tmp) / "hf"
            export_hf(
                job.run_dir,
                hf_dir,
                iteration=job.iteration,
                dtype=EXPORT_DTYPES[settings.dtype],
            )
            eval_start = time.perf_counter()
            results = evaluate_hf_dir(hf_dir, job.tasks, settings, harness, manager)
        entries = entries_from_results(results, settings, harness, time.perf_counter() - eval_start)
        path = write_task_results(
            job.run_dir,
            job.iteration,
            job.run_dir / f"iter_{job.iteration:07d}",
            entries,
        )
        written.append(path)
        elapsed = time.perf_counter() - start
        eta = elapsed / n * (len(jobs) - n)
        log(
            f"evaluate: {where}: {_summary(entries)} -> {path} "
            f"({time.perf_counter() - job_start:.1f} s; elapsed {_clock(elapsed)}, "
            f"ETA {_clock(eta)})"
        )
    return written
