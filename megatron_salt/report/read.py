"""Reading runs: a run directory's ``metrics.jsonl`` or its wandb offline runs, into a :class:`Run`.

Both give the same :class:`Run`. wandb has no Python reader for its transaction log, so
its ``wandb-core`` binary is run for it (a subprocess).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from megatron_salt.monitor import METRICS_FILE
from megatron_salt.report.run import (
    _KD_ONLY_KEYS,
    SETTINGS_KEYS,
    Point,
    ReportError,
    Run,
    _as_float,
    _interp,
    _optional_float,
)


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
