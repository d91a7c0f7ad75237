"""The comparison as markdown: a headline sentence per run, the table, how to read it."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence

from megatron_salt.report.compare import Comparison, comparability_warnings
from megatron_salt.report.run import Run


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _percent(fraction: float | None) -> str:
    return "n/a" if fraction is None else f"{100 * fraction:.1f}%"


def _setting(run: Run, key: str, fmt=str, none: str = "—") -> str:
    if run.mode != "salt":
        return "—"
    value = run.settings.get(key)
    return none if value is None else fmt(value)


def _kd_data(run: Run) -> str:
    if run.mode != "salt":
        return "—"
    if run.settings.get("kd_data_selection"):
        return f"`{run.settings['kd_data_selection']}`"
    return "separate set" if run.settings.get("kd_data_path") else "main data"


TABLE_HEADER = (
    "run",
    "mode",
    "KD α",
    "KD T",
    "KD top-k",
    "KD schedule",
    "n_KD",
    "KD data",
    "steps",
    "train time",
    "final val loss",
    "Δ vs baseline",
    "reaches at step",
    "% of baseline steps",
    "reaches at time",
    "% of baseline time",
)


def table_rows(rows: Sequence[Comparison]) -> list[list[str]]:
    """The table's cells, row by row (what the markdown shows)."""
    out = []
    for row in rows:
        run = row.run
        reached = row.reach is not None
        out.append(
            [
                run.name + (" (baseline)" if row.is_baseline else ""),
                run.mode or "?",
                _setting(run, "kd_alpha", lambda v: f"{v:g}"),
                _setting(run, "kd_temperature", lambda v: f"{v:g}"),
                _setting(run, "kd_top_k", none="all"),
                _setting(run, "kd_schedule"),
                _setting(run, "kd_iters"),
                _kd_data(run),
                str(run.last_iteration),
                format_duration(run.time_at(run.last_iteration)),
                f"{row.final_val_loss:.4f}",
                f"{row.delta:+.4f}",
                str(row.reach.iteration) if reached else "never",
                _percent(row.step_fraction) if reached else "never",
                format_duration(row.reach.train_time_s) if reached else "never",
                _percent(row.time_fraction) if reached else "never",
            ]
        )
    return out


def markdown_table(rows: Sequence[Comparison]) -> str:
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
    lines += ["| " + " | ".join(cells) + " |" for cells in table_rows(rows)]
    return "\n".join(lines) + "\n"


def _eval_interval(run: Run) -> int | None:
    gaps = Counter(b.iteration - a.iteration for a, b in itertools.pairwise(run.val_loss))
    return gaps.most_common(1)[0][0] if gaps else None


def headline(rows: Sequence[Comparison], baseline: Run) -> list[str]:
    """One sentence per non-baseline run: the paper's "matches the baseline at x% of steps"."""
    target = baseline.final_val
    sentences = []
    for row in rows:
        if row.is_baseline:
            continue
        final = f"final validation loss {row.final_val_loss:.4f} ({row.delta:+.4f} vs baseline)"
        if row.reach is None:
            sentences.append(
                f"{row.run.name} never reaches the baseline's final validation loss "
                f"{target.value:.4f} in its {row.run.last_iteration} steps; {final}."
            )
            continue
        when = f"step {row.reach.iteration} ({_percent(row.step_fraction)} of the baseline's "
        when += f"{target.iteration} steps)"
        if row.time_fraction is not None:
            when += (
                f" and {format_duration(row.reach.train_time_s)} of training "
                f"({_percent(row.time_fraction)} of the baseline's "
                f"{format_duration(target.train_time_s)})"
            )
        sentences.append(
            f"{row.run.name} reaches the baseline's final validation loss "
            f"{target.value:.4f} at {when}; {final}."
        )
    return sentences


def markdown_report(
    rows: Sequence[Comparison], baseline: Run, *, title: str, png_name: str | None
) -> str:
    target = baseline.final_val
    intervals = sorted({i for r in rows if (i := _eval_interval(r.run)) is not None})
    interval_text = " / ".join(str(i) for i in intervals) or "?"
    interval_text += " step" if intervals == [1] else " steps"
    parts = [
        f"# {title}\n",
        f"Baseline: **{baseline.name}** (`{baseline.source}`), final validation loss "
        f"**{target.value:.4f}** at step {target.iteration} after "
        f"{format_duration(target.train_time_s)} of training.\n",
        *[f"- {s}" for s in headline(rows, baseline)],
        "",
        markdown_table(rows),
        "How to read it:\n",
        "- *reaches*: the first validation evaluation whose loss is at or below the "
        f"baseline's final validation loss ({target.value:.4f}). There is no interpolation "
        "between evaluations, so the step is only as precise as `--eval-interval` "
        f"(here every {interval_text}, plus the last step).",
        "- *% of baseline steps* / *time*: that evaluation's step / training time over the "
        "step / training time of the baseline's final evaluation.",
        "- *train time*: cumulative optimizer-step wall-clock (`train_time_s`; it includes "
        "the teacher's forward pass during KD and excludes evaluation and checkpointing). "
        "Only compare runs timed on the same hardware.",
        "- *Δ vs baseline*: final validation loss minus the baseline's; negative is better.",
        "- *n_KD*: steps with the teacher (KD phase); *KD T*: temperature; *KD top-k*: "
        "teacher top-k (all = full vocabulary).",
    ]
    parts += [f"- **Note**: {w}." for w in comparability_warnings((r.run for r in rows), baseline)]
    if png_name:
        parts += ["", f"![{title}]({png_name})"]
    return "\n".join(parts) + "\n"
