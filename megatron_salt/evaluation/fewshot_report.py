"""The few-shot part of ``compare_runs.py``: lm-eval results of each run at each evaluated step.

Reads ``RUN_DIR/eval/iter_*.json`` (written by ``tools/evaluate.py``). Each task counts with
its primary metric (``acc`` where it has one; see :data:`results.PRIMARY_METRICS`), and the
**few-shot average** is their unweighted mean over the tasks of the baseline's final
evaluation, as the paper averages its few-shot suite. A point counts only if every task was
evaluated there with the baseline's settings (n-shot, limit, dtype); otherwise its average is
"n/a" and the report says why. The headline is the paper's: the first evaluated step at which
a run's average is at or above the baseline's final average, as a fraction of the baseline's
steps. No interpolation between evaluated steps, as for the validation loss.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from megatron_salt.evaluation.results import read_run_results


@dataclass(frozen=True)
class FewShotPoint:
    """One evaluated iteration: each task's primary score and the settings it was run with."""

    iteration: int
    scores: dict[str, float]
    settings: dict[str, tuple]  # task -> (n-shot, limit, dtype)

    def average(self, tasks: Sequence[str], settings: dict[str, tuple]) -> float | None:
        """Mean over ``tasks`` if each was evaluated here with ``settings``, else None."""
        values = []
        for task in tasks:
            if task not in self.scores or self.settings.get(task) != settings.get(task):
                return None
            values.append(self.scores[task])
        return sum(values) / len(values) if values else None


@dataclass
class FewShotRun:
    name: str
    run_dir: Path
    points: list[FewShotPoint] = field(default_factory=list)
    metrics: dict[str, str] = field(default_factory=dict)  # task -> its primary metric
    lm_eval_versions: set[str] = field(default_factory=set)

    @property
    def final(self) -> FewShotPoint:
        return self.points[-1]


def load_fewshot(run_dir: str | Path, name: str) -> FewShotRun | None:
    """A run's few-shot results, or None when it has none."""
    results = read_run_results(run_dir)
    if not results:
        return None
    run = FewShotRun(name=name, run_dir=Path(run_dir))
    for iteration in sorted(results):
        scores, settings = {}, {}
        for task, entry in results[iteration]["tasks"].items():
            metric = entry.get("primary_metric")
            value = entry["metrics"].get(metric) if metric else None
            if not isinstance(value, (int, float)) or math.isnan(value):
                continue
            scores[task] = float(value)
            settings[task] = (entry.get("num_fewshot"), entry.get("limit"), entry.get("dtype"))
            run.metrics.setdefault(task, metric)
            if entry.get("lm_eval_version"):
                run.lm_eval_versions.add(entry["lm_eval_version"])
        if scores:
            run.points.append(FewShotPoint(iteration, scores, settings))
    return run if run.points else None


@dataclass(frozen=True)
class FewShotComparison:
    run: FewShotRun
    is_baseline: bool
    final_average: float | None
    delta: float | None
    reach: FewShotPoint | None  # first point at/above the baseline's final average
    step_fraction: float | None


@dataclass
class FewShotReport:
    baseline: FewShotRun
    tasks: list[str]  # the tasks of the baseline's final evaluation
    settings: dict[str, tuple]  # the baseline's, per task
    target: float  # the baseline's final few-shot average
    rows: list[FewShotComparison]

    def average(self, point: FewShotPoint) -> float | None:
        return point.average(self.tasks, self.settings)


def compare_fewshot(runs: Sequence[FewShotRun], baseline: FewShotRun) -> FewShotReport | None:
    """Rows of the few-shot table; None if the baseline's final point has no average."""
    final = baseline.final
    tasks = sorted(final.scores)
    target = final.average(tasks, final.settings)
    if target is None:
        return None
    report = FewShotReport(baseline, tasks, dict(final.settings), target, [])
    base_steps = final.iteration
    for run in runs:
        reach = next(
            (p for p in run.points if (a := report.average(p)) is not None and a >= target), None
        )
        final_average = report.average(run.final)
        report.rows.append(
            FewShotComparison(
                run=run,
                is_baseline=run is baseline,
                final_average=final_average,
                delta=None if final_average is None else final_average - target,
                reach=reach,
                step_fraction=reach.iteration / base_steps if reach and base_steps else None,
            )
        )
    return report


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "n/a" if value is None else format(value, spec)


def headline(report: FewShotReport) -> list[str]:
    base = report.baseline.final
    sentences = []
    for row in report.rows:
        if row.is_baseline:
            continue
        final = (
            f"final few-shot average {_fmt(row.final_average)} "
            f"({_fmt(row.delta, '+.4f')} vs baseline)"
        )
        if row.reach is None:
            sentences.append(
                f"{row.run.name} never reaches the baseline's final few-shot average "
                f"{report.target:.4f} at its evaluated steps; {final}."
            )
        else:
            sentences.append(
                f"{row.run.name} reaches the baseline's final few-shot average "
                f"{report.target:.4f} at step {row.reach.iteration} "
                f"({100 * row.step_fraction:.1f}% of the baseline's {base.iteration} steps); "
                f"{final}."
            )
    return sentences


def markdown_fewshot(report: FewShotReport, png_name: str | None = None) -> str:
    tasks, base = report.tasks, report.baseline
    columns = [f"{t} ({base.metrics.get(t, '?')})" for t in tasks]
    header = ["run", "step", "% of baseline steps", *columns, "few-shot average"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    notes: list[str] = []
    for row in report.rows:
        run = row.run
        label = run.name + (" (baseline)" if row.is_baseline else "")
        for point in run.points:
            average = report.average(point)
            if average is None:
                notes.append(
                    f"{run.name} at step {point.iteration} lacks a task of the baseline's "
                    "final evaluation or used other settings (n-shot, limit, dtype): no average"
                )
            cells = [
                label,
                str(point.iteration),
                f"{100 * point.iteration / base.final.iteration:.0f}%",
                *[_fmt(point.scores.get(t)) for t in tasks],
                _fmt(average) + (" ★" if row.reach is point and not row.is_baseline else ""),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    shots = sorted({s[0] for s in report.settings.values()}, key=str)
    limits = sorted({s[1] for s in report.settings.values()}, key=str)
    versions = sorted(set().union(*(r.run.lm_eval_versions for r in report.rows)))
    parts = [
        "## Few-shot evaluation (lm-evaluation-harness)\n",
        f"Baseline **{base.name}**: final few-shot average **{report.target:.4f}** at step "
        f"{base.final.iteration} over {len(tasks)} task(s).\n",
        *[f"- {s}" for s in headline(report)],
        "",
        "\n".join(lines) + "\n",
        "How to read it:\n",
        "- Each task column is its primary metric (`acc` where the task has one); the "
        "*few-shot average* is their unweighted mean over the tasks of the baseline's final "
        "evaluation. ★: the first evaluated step at or above the baseline's final average "
        "(no interpolation between evaluated steps).",
        f"- Settings: n-shot {', '.join(map(str, shots))}; limit "
        f"{', '.join('all' if x is None else str(x) for x in limits)} documents per task; "
        f"lm-eval {', '.join(versions) or '?'}. With a limit, scores are on that many "
        "documents only: mind the stderr in the `eval/*.json` files.",
    ]
    parts += [f"- **Note**: {n}." for n in dict.fromkeys(notes)]
    if png_name:
        parts += ["", f"![few-shot]({png_name})"]
    return "\n".join(parts) + "\n"


def plot_fewshot(report: FewShotReport, path: str | Path, *, title: str, save) -> None:
    """Few-shot average vs step (left), each task's score vs step (right); the baseline's
    final average dashed, a star where each run first reaches it. ``save(fig, path)``
    writes the figure (the caller's atomic writer)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_avg, ax_task) = plt.subplots(1, 2, figsize=(14, 5.5))
    colours = itertools.cycle(plt.get_cmap("tab10").colors)
    styles = ["-", "--", ":", "-."]
    for row in report.rows:
        run = row.run
        colour = "black" if row.is_baseline else next(colours)
        label = run.name + (" (baseline)" if row.is_baseline else "")
        points = [(p.iteration, report.average(p)) for p in run.points]
        points = [(x, y) for x, y in points if y is not None]
        width = 2.2 if row.is_baseline else 1.6
        if points:
            ax_avg.plot(*zip(*points, strict=True), marker="o", color=colour, lw=width, label=label)
        if row.reach is not None and not row.is_baseline:
            y = report.average(row.reach)
            ax_avg.plot([row.reach.iteration], [y], marker="*", ms=16, color=colour, mec="black")
            ax_avg.annotate(
                f"{100 * row.step_fraction:.0f}%",
                (row.reach.iteration, y),
                textcoords="offset points",
                xytext=(0, 12),
                ha="center",
                color=colour,
                fontweight="bold",
            )
        for task, style in zip(report.tasks, itertools.cycle(styles)):
            series = [(p.iteration, p.scores[task]) for p in run.points if task in p.scores]
            if series:
                ax_task.plot(
                    *zip(*series, strict=True),
                    ls=style,
                    marker=".",
                    color=colour,
                    lw=width,
                    label=f"{run.name}: {task}",
                )
    ax_avg.axhline(report.target, color="black", ls="--", lw=1, label="baseline final average")
    ax_avg.set_title("few-shot average vs step")
    ax_task.set_title("each task (primary metric) vs step")
    for ax in (ax_avg, ax_task):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax_avg.set_ylabel("score")
    fig.suptitle(f"{title}: few-shot evaluation", fontsize=13)
    fig.tight_layout()
    save(fig, path)
    plt.close(fig)


def fewshot_report(
    runs: Sequence[tuple[str, Path | None]], baseline_index: int
) -> FewShotReport | str | None:
    """Read the few-shot results of runs given as (name, run directory),
    ``runs[baseline_index]`` the baseline: the report, a one-sentence section when only the
    baseline lacks results, or None when there is nothing to show. Reads only: a bad
    results file raises before anything is written."""
    loaded = [load_fewshot(d, name) if d is not None else None for name, d in runs]
    baseline = loaded[baseline_index]
    if baseline is None:
        if any(loaded):
            return (
                "## Few-shot evaluation (lm-evaluation-harness)\n\n"
                f"The baseline {runs[baseline_index][0]} has no few-shot results "
                "(run `tools/evaluate.py --load` on it): nothing to compare against.\n"
            )
        return None
    return compare_fewshot([r for r in loaded if r is not None], baseline)


def render_fewshot(report: FewShotReport | str | None, png_path: Path, *, title: str, save) -> str:
    """The markdown section for :func:`fewshot_report`'s result, writing ``png_path``."""
    if report is None or isinstance(report, str):
        return report or ""
    plot_fewshot(report, png_path, title=title, save=save)
    return markdown_fewshot(report, png_name=png_path.name)
