"""Compare SALT runs with their baseline: parse run logs, find where each run reaches the
baseline's final validation loss, write a markdown table and a PNG.

A run is read from its ``metrics.jsonl`` (written by :mod:`megatron_salt.monitor`) or from
its wandb offline run, and both give the same :class:`Run`. The headline number is the
paper's: the fraction of the baseline's steps (and training wall-clock) at which a SALT run
first evaluates at or below the baseline's *final* validation loss.

Used by ``tools/compare_runs.py``; see ``docs/compare_runs.md``.
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
import os
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from megatron_salt.monitor import METRICS_FILE

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


# --- metrics.jsonl --------------------------------------------------------------------


def read_metrics_jsonl(path: str | Path) -> Run:
    """Parse one run's ``metrics.jsonl``.

    An iteration logged twice keeps its last record (the trainer already drops records
    past the checkpoint on resume). Of several ``"run"`` headers (one per launch) the last
    one wins. A final line without its newline that does not parse is a write cut short
    by a crash and is skipped with a warning; any other bad line is an error.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ReportError(f"{path}: cannot read: {err}") from None
    lines = text.split("\n")
    header: dict[str, Any] | None = None
    by_kind: dict[str, dict[int, dict[str, Any]]] = {"train": {}, "eval": {}}
    kd_end: int | None = None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("kind"), str):
                raise ValueError("not a JSON object with a 'kind'")
            kind = record["kind"]
            if kind != "run" and not _is_int(record.get("iteration")):
                raise ValueError(f"'{kind}' record without an integer 'iteration'")
        except ValueError as err:  # json.JSONDecodeError is a ValueError
            if number == len(lines):  # no newline after it: cut short mid-write
                print(f"warning: {path}:{number}: skipping a truncated last line", file=sys.stderr)
                continue
            raise ReportError(f"{path}:{number}: malformed metrics line: {err}") from None
        if kind == "run":
            header = record
        elif kind in by_kind:
            by_kind[kind][record["iteration"]] = record
        elif kind == "event" and record.get("event") == "kd_end":
            kd_end = record["iteration"]
    train = [by_kind["train"][i] for i in sorted(by_kind["train"])]
    evals = [by_kind["eval"][i] for i in sorted(by_kind["eval"])]
    run_dir = path.parent
    name = (header or {}).get("name") or run_dir.resolve().name
    run = Run(
        name=str(name),
        mode=(header or {}).get("mode"),
        source=str(path),
        settings={k: (header or {}).get(k) for k in SETTINGS_KEYS},
        val_loss=[
            Point(
                r["iteration"], _as_float(r.get("lm_loss")), _optional_float(r.get("train_time_s"))
            )
            for r in evals
        ],
        train_loss=[
            Point(
                r["iteration"], _as_float(r.get("lm_loss")), _optional_float(r.get("train_time_s"))
            )
            for r in train
        ],
        kd_weight=[
            Point(r["iteration"], _as_float(r["kd_weight"]), _optional_float(r.get("train_time_s")))
            for r in train
            if "kd_weight" in r
        ],
        kd_end=kd_end,
    )
    return run


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --- wandb offline runs ---------------------------------------------------------------


def _wandb_records(run_file: Path) -> list[dict[str, Any]]:
    """The records of a ``.wandb`` transaction log, as JSON, via wandb's own reader.

    wandb 0.31 has no Python reader for its transaction log; its ``wandb-core`` binary
    does (``wandb leet inspect --json``), so we run that rather than decode the format.
    """
    try:
        from wandb.util import get_core_path

        core = get_core_path()
    except Exception as err:  # ImportError, or wandb-core not built for this platform
        raise ReportError(f"{run_file}: reading wandb runs needs wandb >= 0.31: {err}") from None
    command = [core, "leet", "inspect", "--json", "--no-observability", "--run-file"]
    result = subprocess.run(
        [*command, str(run_file), str(run_file.parent.parent)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        why = (result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[-1]
        raise ReportError(f"{run_file}: cannot read wandb run: {why}")
    records = []
    for line in result.stdout.splitlines():
        if line.strip():
            records.append(json.loads(line))
    return records


def _wandb_launch(run_file: Path) -> dict[str, Any]:
    """One wandb run (one launch of the trainer): config, tags, and history rows by step."""
    config: dict[str, Any] = {}
    launch: dict[str, Any] = {"config": config, "tags": [], "display_name": None, "rows": {}}
    for record in _wandb_records(run_file):
        kind = record.get("type")
        if kind == "run":
            run = record["run"]
            config.update(run.get("config", {}).get("update", {}))
            launch["tags"] = list(run.get("tags", []))
            launch["display_name"] = run.get("display_name")
            launch["start_time"] = run.get("start_time", "")
        elif kind == "config":
            config.update(record["config"].get("update", {}))
        elif kind == "history":
            history = record["history"]
            step = history.get("step", {}).get("num", history.get("item", {}).get("_step"))
            if step is not None:
                launch["rows"].setdefault(int(step), {}).update(history.get("item", {}))
    return launch


def read_wandb_run(run_files: Sequence[Path], source: str) -> Run:
    """Build a :class:`Run` from the ``.wandb`` files of one training run's launches.

    The trainer logs ``train/<name>`` (every ``--log-interval``), ``valid/lm loss`` and
    ``kd/teacher_released`` with ``step=iteration``; its config is ``vars(args)``. A later
    launch (a resume) replaces an earlier one's records from its first logged step on.
    """
    launches = sorted(
        (_wandb_launch(f) for f in run_files), key=lambda launch: launch.get("start_time", "")
    )
    rows: dict[int, dict[str, Any]] = {}
    for launch in launches:
        if launch["rows"]:
            first = min(launch["rows"])
            rows = {step: row for step, row in rows.items() if step < first}
        rows.update(launch["rows"])
    last = launches[-1]
    config, tags = last["config"], last["tags"]
    mode = "salt" if "salt" in tags else "baseline" if "baseline" in tags else None
    if mode is None and config:
        mode = "salt" if config.get("kd_teacher_load") and config.get("kd_iters") else "baseline"
    settings = {k: config.get(k) for k in SETTINGS_KEYS}
    settings["kd_iters"] = settings["kd_iters"] or 0
    if mode == "baseline":
        settings.update({k: None for k in _KD_ONLY_KEYS})
    save = config.get("save")
    name = (
        config.get("wandb_exp_name")
        or (os.path.basename(os.path.normpath(save)) if save else None)
        or last["display_name"]
        or Path(source).name
    )

    train_loss, kd_weight, kd_end = [], [], None
    for step in sorted(rows):
        row = rows[step]
        train_time = _optional_float(row.get("train/train time (s)"))
        if "train/lm loss" in row:
            train_loss.append(Point(step, _as_float(row["train/lm loss"]), train_time))
        if "train/kd weight" in row:
            kd_weight.append(Point(step, _as_float(row["train/kd weight"]), train_time))
        if "kd/teacher_released" in row:
            kd_end = step
    run = Run(
        name=str(name),
        mode=mode,
        source=source,
        settings=settings,
        train_loss=train_loss,
        kd_weight=kd_weight,
        kd_end=kd_end,
    )
    # Only train rows carry the clock; an eval off the log interval interpolates it.
    clock = [(0, 0.0)] + [(p.iteration, p.train_time_s) for p in train_loss if p.train_time_s]
    for step in sorted(rows):
        row = rows[step]
        if "valid/lm loss" in row:
            train_time = _optional_float(row.get("train/train time (s)"))
            if train_time is None and len(clock) > 1:
                train_time = _interp(step, clock)
            run.val_loss.append(Point(step, _as_float(row["valid/lm loss"]), train_time))
    return run


def _wandb_run_dirs(directory: Path) -> list[Path]:
    return sorted(
        d
        for pattern in ("offline-run-*", "run-*")
        for d in directory.glob(pattern)
        if d.is_dir() and any(d.glob("run-*.wandb"))
    )


def _wandb_files(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob("run-*.wandb"))


def load_run(path: str | Path) -> Run:
    """Read one run from a run directory (``--save``), a wandb directory, a wandb run
    directory (``offline-run-*``) or a ``.wandb`` file.

    A run directory's ``metrics.jsonl`` is preferred over its wandb logs. Several wandb
    runs in one wandb directory are taken as launches (resumes) of one training run when
    they share a name; otherwise pass the one you mean.
    """
    path = Path(path)
    if not path.exists():
        raise ReportError(f"{path}: no such file or directory")
    if path.is_file():
        if path.suffix == ".wandb":
            run = read_wandb_run([path], str(path))
        elif path.name.endswith(".jsonl"):
            run = read_metrics_jsonl(path)
        else:
            raise ReportError(f"{path}: expected a run directory, metrics.jsonl or a .wandb file")
    elif (path / METRICS_FILE).is_file():
        run = read_metrics_jsonl(path / METRICS_FILE)
    elif _wandb_files(path):
        run = read_wandb_run(_wandb_files(path), str(path))
    else:
        wandb_dir = path / "wandb" if _wandb_run_dirs(path / "wandb") else path
        run_dirs = _wandb_run_dirs(wandb_dir)
        if not run_dirs:
            raise ReportError(
                f"{path}: no {METRICS_FILE} and no wandb run (offline-run-*/run-*.wandb) here"
            )
        runs = [read_wandb_run(_wandb_files(d), str(d)) for d in run_dirs]
        names = sorted({r.name for r in runs})
        if len(names) > 1:
            raise ReportError(
                f"{wandb_dir}: holds {len(names)} different wandb runs ({', '.join(names)}): "
                "pass one offline-run-* directory"
            )
        files = [f for d in run_dirs for f in _wandb_files(d)]
        run = read_wandb_run(files, str(wandb_dir))
    if not run.val_loss:
        raise ReportError(f"{run.source}: no validation (eval) records: nothing to compare")
    run.run_dir = path if path.is_dir() else path.parent
    return run


# --- the comparison -------------------------------------------------------------------


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


# --- the plot -------------------------------------------------------------------------


def _time_unit(max_seconds: float) -> tuple[float, str]:
    if max_seconds >= 2 * 3600:
        return 3600.0, "h"
    if max_seconds >= 120:
        return 60.0, "min"
    return 1.0, "s"


def _focus_ylim(ax, series: Sequence[Sequence[Point]], last_iteration: int) -> None:
    """Zoom the y-axis past the first 10% of training, where the curves are comparable."""
    values = [p.value for s in series for p in s if not math.isnan(p.value)]
    late = [
        p.value
        for s in series
        for p in s
        if not math.isnan(p.value) and p.iteration >= 0.1 * last_iteration
    ]
    if not values:
        return
    low, high = min(values), max(late or values)
    pad = 0.06 * (high - low) or 0.1
    ax.set_ylim(low - pad, high + pad)


def plot_comparison(
    rows: Sequence[Comparison], baseline: Run, path: str | Path, *, title: str
) -> None:
    """Validation and train loss vs step (left) and vs training wall-clock (right), the KD
    weight below them; KD phases shaded; the baseline's final validation loss as a line and
    where each run first reaches it marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    runs = [r.run for r in rows]
    any_kd = any(r.kd_weight and r.mode == "salt" for r in runs)
    fig, axes = plt.subplots(
        3 if any_kd else 2,
        2,
        figsize=(14, 11 if any_kd else 9),
        sharex="col",
        gridspec_kw={"height_ratios": [3, 3, 1.2] if any_kd else [3, 3]},
        squeeze=False,
    )
    max_time = max((r.time_at(r.last_iteration) or 0.0) for r in runs)
    scale, unit = _time_unit(max_time)
    salt_colours = itertools.cycle(plt.get_cmap("tab10").colors)
    colours = {id(r): ("black" if r is baseline else next(salt_colours)) for r in runs}
    target = baseline.final_val.value
    last_iteration = max(r.last_iteration for r in runs)

    def xs(points: Sequence[Point], run: Run, col: int) -> list[float]:
        """x positions: steps (left column) or training wall-clock (right column)."""
        if col == 0:
            return [p.iteration for p in points]
        return [
            (p.train_time_s if p.train_time_s is not None else run.time_at(p.iteration) or 0.0)
            / scale
            for p in points
        ]

    for row in rows:
        run, colour = row.run, colours[id(row.run)]
        style = {"color": colour, "lw": 2.2 if row.is_baseline else 1.6}
        label = run.name + (" (baseline)" if row.is_baseline else "")
        for col in range(2):
            ax_val, ax_train = axes[0][col], axes[1][col]
            ax_val.plot(
                xs(run.val_loss, run, col),
                [p.value for p in run.val_loss],
                marker="o",
                ms=3,
                label=label,
                **style,
            )
            ax_train.plot(
                xs(run.train_loss, run, col), [p.value for p in run.train_loss], alpha=0.85, **style
            )
            kd_end = run.kd_phase_end
            if kd_end:
                span = (0.0, kd_end) if col == 0 else (0.0, (run.time_at(kd_end) or 0) / scale)
                for ax in axes[:, col]:
                    ax.axvspan(*span, color=colour, alpha=0.08, lw=0)
                    ax.axvline(span[1], color=colour, ls=":", lw=1)
            if any_kd and run.mode == "salt" and run.kd_weight:
                # A logged weight is the mean over the log interval that ends at its step.
                weights = [Point(0, run.kd_weight[0].value, 0.0), *run.kd_weight]
                axes[2][col].step(
                    xs(weights, run, col), [p.value for p in weights], where="pre", **style
                )
            if row.reach is not None and not row.is_baseline:
                x = row.reach.iteration if col == 0 else xs([row.reach], run, col)[0]
                fraction = row.step_fraction if col == 0 else row.time_fraction
                ax_val.plot(
                    [x],
                    [row.reach.value],
                    marker="*",
                    ms=16,
                    color=colour,
                    markeredgecolor="black",
                    zorder=5,
                )
                if fraction is not None:
                    ax_val.annotate(
                        f"{100 * fraction:.0f}%",
                        (x, row.reach.value),
                        textcoords="offset points",
                        xytext=(0, 12),
                        ha="center",
                        color=colour,
                        fontweight="bold",
                        bbox={
                            "boxstyle": "round,pad=0.15",
                            "fc": "white",
                            "ec": "none",
                            "alpha": 0.8,
                        },
                    )

    for col in range(2):
        axes[0][col].axhline(target, color="black", ls="--", lw=1)
        _focus_ylim(axes[0][col], [r.val_loss for r in runs], last_iteration)
        _focus_ylim(axes[1][col], [r.train_loss for r in runs], last_iteration)
        for ax in axes[:, col]:
            ax.grid(alpha=0.3)
        xlabel = "step" if col == 0 else f"training wall-clock ({unit})"
        axes[-1][col].set_xlabel(xlabel)
        axes[0][col].set_title(f"validation loss vs {'step' if col == 0 else 'wall-clock'}")
        axes[1][col].set_title(f"train LM loss vs {'step' if col == 0 else 'wall-clock'}")
        if any_kd:
            axes[2][col].set_title("KD weight w (as logged)")
            axes[2][col].set_ylim(bottom=0)
    axes[0][0].set_ylabel("validation LM loss")
    axes[1][0].set_ylabel("train LM loss")
    if any_kd:
        axes[2][0].set_ylabel("w")

    handles, labels = axes[0][0].get_legend_handles_labels()
    handles += [
        plt.Line2D([], [], color="black", ls="--", lw=1),
        plt.Line2D([], [], marker="*", ms=14, color="grey", markeredgecolor="black", ls=""),
        Patch(color="grey", alpha=0.25),
    ]
    labels += [
        f"baseline final val loss ({target:.4f})",
        "first eval at/below it (% of baseline)",
        "KD phase (run's colour)",
    ]
    ncol = min(4, len(labels))
    fig.legend(handles, labels, loc="lower center", ncol=ncol, frameon=False)
    legend_rows = -(-len(labels) // ncol)
    who = baseline.name if "baseline" in baseline.name else f"baseline {baseline.name}"
    fig.suptitle(
        f"{title}\n{who}: final validation loss {target:.4f} "
        f"at step {baseline.final_val.iteration}",
        fontsize=13,
    )
    # Leave the legend its rows below the axes (many runs: several rows).
    fig.tight_layout(rect=(0, 0.02 + 0.022 * legend_rows, 1, 1))
    _save_figure(fig, path)
    plt.close(fig)


def _atomic_write(path: str | Path, write) -> None:
    """Write through a temporary file next to ``path`` and rename it into place."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or ".")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _save_figure(fig, path: str | Path) -> None:
    _atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))


def write_report(
    runs: Sequence[Run],
    baseline: Run,
    prefix: str | Path,
    *,
    title: str,
    overhead=None,
    extra_sections: Sequence[str] = (),
) -> tuple[Path, Path, str]:
    """Write ``{prefix}.png`` and ``{prefix}.md``; return their paths and the markdown.

    ``extra_sections`` (markdown) go at the end, e.g. the demo's machine and stage times.

    Runs with few-shot results (``RUN_DIR/eval/``, from ``tools/evaluate.py``) add a
    few-shot section and ``{prefix}_fewshot.png`` (:mod:`megatron_salt.evaluation.fewshot_report`).
    ``overhead`` (a :class:`megatron_salt.compute_cost.OverheadCost`) adds the compute-to-reach
    section with the teacher's pretraining and the scoring cost counted.
    """
    from megatron_salt.evaluation.fewshot_report import fewshot_report, render_fewshot
    from megatron_salt.evaluation.results import EvalError

    if not any(run is baseline for run in runs):
        runs = [baseline, *runs]
    rows = compare(runs, baseline)
    try:  # read (and check) the few-shot results before writing anything
        fewshot = fewshot_report(
            [(r.name, r.run_dir) for r in runs],
            next(i for i, r in enumerate(runs) if r is baseline),
        )
    except EvalError as err:
        raise ReportError(str(err)) from None
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    png, md = prefix.with_name(prefix.name + ".png"), prefix.with_name(prefix.name + ".md")
    text = markdown_report(rows, baseline, title=title, png_name=png.name)
    plot_comparison(rows, baseline, png, title=title)
    section = render_fewshot(
        fewshot, prefix.with_name(prefix.name + "_fewshot.png"), title=title, save=_save_figure
    )
    if overhead is not None:
        from megatron_salt.compute_cost import cost_section

        section = (section + "\n" if section else "") + cost_section(rows, overhead)
    for part in (section, *extra_sections):
        if part:
            text += "\n" + part
    _atomic_write(md, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return png, md, text
