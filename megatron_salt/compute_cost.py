"""SALT's compute to reach the baseline, its teacher's cost counted (``--count-teacher-cost``).

The paper's wall-clock saving (about 25% at 2.8B) counts what SALT spends
before its student starts: pretraining the SLM teacher and, for SALT_DS, scoring
the corpus with it. This module adds both to every SALT run's side of the
compute-to-reach figure:

* FLOPs, the usual estimates (``megatron_salt.flops``): a training step
  ``6*N*tokens``; the teacher's forward during the KD phase ``2*N_teacher*tokens``;
  the teacher's pretraining ``6*N_teacher*tokens`` over its whole run; scoring
  ``2*N_teacher*tokens``, as recorded by ``tools/score_data.py`` in the sidecar.
  ``N`` is ``num_parameters`` in each run's ``metrics.jsonl`` header (a run read
  from wandb alone has no FLOPs); tokens per step ``global_batch_size * seq_length``.
* wall-clock where it was logged: the teacher run's ``train_time_s`` at its last
  step and the sidecar's ``scoring_seconds``. Only comparable on the same hardware.

Teacher pretraining is counted in full for every SALT run (the paper's accounting:
one teacher per student); scoring only for runs that selected their KD data.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from megatron_salt.flops import approx_forward_flops, approx_training_flops
from megatron_salt.monitor import METRICS_FILE
from megatron_salt.report import Comparison, ReportError, Run, format_duration, load_run


@dataclass(frozen=True)
class OverheadCost:
    """What a SALT run spends before its first step: its teacher, and scoring the data."""

    teacher: Run
    teacher_params: int | None
    teacher_flops: float | None  # 6 * N_t * tokens over the teacher's whole run
    teacher_seconds: float | None  # its train_time_s at its last step
    scoring_flops: float | None = None  # None: scoring not given
    scoring_seconds: float | None = None
    scoring_sources: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def num_parameters(run: Run) -> int | None:
    """``num_parameters`` of the run's last ``metrics.jsonl`` header (wandb configs lack it)."""
    path = run.run_dir / METRICS_FILE if run.run_dir is not None else None
    if path is None or not path.is_file():
        return None
    found = None
    with open(path, encoding="utf-8") as f:
        for line in f:
            if '"run"' in line:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # report.read_metrics_jsonl has already judged the file
                if record.get("kind") == "run":
                    found = record.get("num_parameters", found)
    return found


def _tokens_per_step(run: Run) -> int | None:
    gbs, seq = run.settings.get("global_batch_size"), run.settings.get("seq_length")
    return gbs * seq if gbs and seq else None


def load_overhead(teacher_dir: str | Path, scoring_prefixes: Sequence[str] = ()) -> OverheadCost:
    """The teacher run's pretraining cost and the scoring cost of ``scoring_prefixes``."""
    teacher = load_run(teacher_dir)
    params = num_parameters(teacher)
    tokens = _tokens_per_step(teacher)
    notes = []
    flops = None
    if params and tokens:
        flops = approx_training_flops(params, teacher.last_iteration * tokens)
    else:
        notes.append(
            f"the teacher run {teacher.source} logged no num_parameters / global_batch_size / "
            "seq_length: its FLOPs are not counted"
        )
    seconds = teacher.time_at(teacher.last_iteration)
    if seconds is None:
        notes.append(f"the teacher run {teacher.source} logged no training time")
    scoring_flops = scoring_seconds = None
    if scoring_prefixes:
        scoring_flops, scoring_seconds = 0.0, 0.0
        for prefix in scoring_prefixes:
            path = Path(prefix + ".salt_scores.json")
            try:
                header = json.loads(path.read_text())
            except (OSError, ValueError) as err:
                raise ReportError(f"--scoring-cost {prefix}: cannot read {path} ({err})") from None
            if header.get("scoring_flops", -1) < 0:
                raise ReportError(
                    f"--scoring-cost {prefix}: {path} records no scoring cost (scored before "
                    "sidecar format 3); score it again or leave out --scoring-cost"
                )
            scoring_flops += header["scoring_flops"]
            scoring_seconds += header["scoring_seconds"]
            if header.get("resumed_chunks"):
                notes.append(
                    f"{path}: scoring resumed {header['resumed_chunks']} chunks of a killed "
                    "job; their wall-clock is not counted"
                )
    return OverheadCost(
        teacher, params, flops, seconds, scoring_flops, scoring_seconds,
        list(scoring_prefixes), notes,
    )  # fmt: skip


def student_flops(run: Run, iteration: int) -> float | None:
    """``6*N*tokens`` of ``run``'s own training up to ``iteration``."""
    params, tokens = num_parameters(run), _tokens_per_step(run)
    return approx_training_flops(params, iteration * tokens) if params and tokens else None


def kd_forward_flops(run: Run, iteration: int, teacher_params: int | None) -> float | None:
    """``2*N_teacher*tokens`` of the teacher's forwards in ``run``'s KD phase to ``iteration``."""
    kd_steps = min(iteration, run.kd_phase_end or 0)
    tokens = _tokens_per_step(run)
    if not kd_steps:
        return 0.0
    return (
        approx_forward_flops(teacher_params, kd_steps * tokens)
        if teacher_params and tokens
        else None
    )


def _sum(*parts: float | None) -> float | None:
    return None if any(p is None for p in parts) else sum(parts)


def _flops(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def _fraction(value: float | None, base: float | None) -> str:
    return "n/a" if value is None or not base else f"{100 * value / base:.1f}%"


COST_HEADER = (
    "run",
    "reaches at step",
    "student FLOPs",
    "teacher fwd (KD)",
    "teacher pretraining",
    "scoring",
    "total FLOPs",
    "% of baseline FLOPs",
    "total time",
    "% of baseline time",
)


def cost_rows(rows: Sequence[Comparison], cost: OverheadCost) -> list[list[str]]:
    """Per run: the compute spent up to where it reaches the baseline's final loss."""
    baseline = next(r for r in rows if r.is_baseline).run
    base_flops = student_flops(baseline, baseline.final_val.iteration)
    base_time = baseline.final_val.train_time_s
    out = []
    for row in rows:
        run = row.run
        name = run.name + (" (baseline)" if row.is_baseline else "")
        if row.reach is None:
            out.append([name, "never", *["—"] * (len(COST_HEADER) - 2)])
            continue
        step = row.reach.iteration
        salt = run.mode == "salt"
        selected = salt and bool(run.settings.get("kd_data_selection"))
        student = student_flops(run, step)
        kd_forward = kd_forward_flops(run, step, cost.teacher_params) if salt else 0.0
        pretrain = cost.teacher_flops if salt else 0.0
        scoring = cost.scoring_flops if selected else 0.0
        total = _sum(student, kd_forward, pretrain, scoring)
        time = _sum(
            row.reach.train_time_s,
            cost.teacher_seconds if salt else 0.0,
            cost.scoring_seconds if selected else 0.0,
        )
        if not selected:
            scoring_cell = "—"
        elif cost.scoring_flops is None:
            scoring_cell = "not given"
        else:
            scoring_cell = _flops(scoring)
        out.append(
            [
                name,
                str(step),
                _flops(student),
                _flops(kd_forward) if salt else "—",
                _flops(pretrain) if salt else "—",
                scoring_cell,
                _flops(total),
                _fraction(total, base_flops),
                format_duration(time),
                _fraction(time, base_time),
            ]
        )
    return out


def _teacher_regime(rows: Sequence[Comparison], teacher: Run) -> list[str]:
    """Is the teacher weaker than the baseline student at the end (the paper's regime)?"""
    base = next((row for row in rows if row.is_baseline), None)
    if base is None or not teacher.val_loss:
        return []
    final, target = teacher.final_val.value, base.final_val_loss
    regime = (
        "worse than the baseline student's: the paper's regime, where KD has to stop early"
        if final > target
        else "at or below the baseline student's: a stronger teacher than the paper's"
    )
    return [
        f"The teacher's final validation loss is {final:.4f} against the baseline's "
        f"{target:.4f}, {regime} (validation sets must match for this to mean anything).",
        "",
    ]


def cost_section(rows: Sequence[Comparison], cost: OverheadCost) -> str:
    """The markdown section ``--count-teacher-cost`` adds to the report."""
    teacher = cost.teacher
    params = f"{cost.teacher_params:,}" if cost.teacher_params else "unknown"
    lines = [
        "## Compute to reach the baseline, teacher cost counted\n",
        f"Teacher: **{teacher.name}** (`{teacher.source}`), "
        f"{params} parameters, {teacher.last_iteration} steps: "
        f"{_flops(cost.teacher_flops)} FLOPs, {format_duration(cost.teacher_seconds)} of "
        "training."
        + (
            f" Scoring ({', '.join(f'`{p}`' for p in cost.scoring_sources)}): "
            f"{_flops(cost.scoring_flops)} FLOPs, {format_duration(cost.scoring_seconds)}."
            if cost.scoring_sources
            else " Scoring cost not given (`--scoring-cost PREFIX`): SALT_DS rows say so."
        ),
        "",
        *_teacher_regime(rows, teacher),
        "| " + " | ".join(COST_HEADER) + " |",
        "|" + "---|" * len(COST_HEADER),
        *["| " + " | ".join(cells) + " |" for cells in cost_rows(rows, cost)],
        "",
        "- FLOPs are estimates: `6*N*tokens` per training step, `2*N_teacher*tokens` for the "
        "teacher's forward in the KD phase and for scoring, `6*N_teacher*tokens` for the "
        "teacher's whole pretraining run (N: `num_parameters` in each run header; tokens: "
        "global batch size x sequence length per step).",
        "- SALT rows add the teacher's pretraining in full, and SALT_DS rows (a KD data "
        "selection) the scoring; *total time* adds the teacher run's training time and the "
        "scoring job's wall-clock to the run's time to reach. The baseline's figures are at "
        "its final evaluation.",
    ]
    missing = [row.run.name for row in rows if num_parameters(row.run) is None]
    notes = list(cost.notes)
    if missing:
        notes.append(
            f"no num_parameters in a metrics.jsonl header for {', '.join(missing)} "
            "(runs read from wandb): their FLOPs are n/a"
        )
    lines += [f"- **Note**: {n}." for n in notes]
    return "\n".join(lines) + "\n"
