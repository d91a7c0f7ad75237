"""tools/compare_runs.py: real metrics.jsonl files (written by the trainer's MetricsLog), real
wandb offline runs, the table's numbers, the PNG, and one-line errors."""

from __future__ import annotations

import importlib.util
import json
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from megatron_salt.monitor import MetricsLog, wandb_view
from megatron_salt.report import (
    compare,
    load_run,
    markdown_table,
    pick_baseline,
    read_metrics_jsonl,
)

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "compare_runs.py"

# Validation curves (eval every 100 steps). The baseline ends at 3.65; salt-a first evaluates
# at or below it at step 700 (exactly 3.65: "at or below"), salt-b never does.
BASELINE_EVAL = [6.0, 5.0, 4.5, 4.2, 4.0, 3.9, 3.8, 3.75, 3.7, 3.65]
SALT_A_EVAL = [5.5, 4.7, 4.3, 4.0, 3.8, 3.7, 3.65, 3.6, 3.55, 3.5]
SALT_B_EVAL = [5.9, 5.1, 4.6, 4.3, 4.1, 3.95, 3.85, 3.8, 3.75, 3.7]
TRAIN_ITERS, LOG_INTERVAL, EVAL_INTERVAL = 1000, 50, 100

# vars(args) of pretrain_salt.py, the part the comparison reads (wandb's config is all args).
ARGS = dict(
    train_iters=TRAIN_ITERS,
    global_batch_size=16,
    seq_length=128,
    log_interval=LOG_INTERVAL,
    eval_interval=EVAL_INTERVAL,
    wandb_exp_name=None,
    kd_teacher_load=None,
    kd_iters=None,
    kd_alpha=0.5,
    kd_temperature=1.0,
    kd_top_k=None,
    kd_schedule="constant",
    kd_data_path=None,
    kd_data_selection=None,
)
RUNS = {
    # name: (eval curve, seconds per step during KD, args)
    "base": (BASELINE_EVAL, None, {}),
    "salt-a": (SALT_A_EVAL, 1.25, dict(kd_teacher_load="/ckpt/teacher", kd_iters=200)),
    "salt-b": (
        SALT_B_EVAL,
        1.5,
        dict(
            kd_teacher_load="/ckpt/teacher",
            kd_iters=400,
            kd_alpha=0.8,
            kd_temperature=2.0,
            kd_top_k=8,
            kd_schedule="linear",
            kd_data_path=["/data/demo_text_document"],
            kd_data_selection="top:0.5",
        ),
    ),
}


def run_args(name: str, root: Path) -> dict:
    return {**ARGS, **RUNS[name][2], "save": str(root / name)}


def history(name: str):
    """What the trainer logs for run ``name``: (step, train record, eval loss or None, event)."""
    curve, kd_seconds, overrides = RUNS[name]
    kd_iters = overrides.get("kd_iters") or 0
    alpha, schedule = overrides.get("kd_alpha", 0.5), overrides.get("kd_schedule", "constant")
    clock = 0.0
    for step in range(LOG_INTERVAL, TRAIN_ITERS + 1, LOG_INTERVAL):
        weights = []
        for s in range(step - LOG_INTERVAL, step):
            in_kd = s < kd_iters
            clock += kd_seconds if in_kd else 1.0
            w = alpha * (1 - s / kd_iters) if schedule == "linear" else alpha
            weights.append(w if in_kd else 0.0)
        train = {
            "consumed samples": step * 16,
            "lm loss": 7.0 - 3.0 * step / TRAIN_ITERS + (0.01 if step % 100 else 0.0),
            "total loss": 7.1 - 3.0 * step / TRAIN_ITERS,
            "grad norm": 1.5,
            "train time (s)": clock,
            "iterations this run": step,
        }
        if kd_iters:
            train["kd weight"] = sum(weights) / len(weights)
        loss = curve[step // EVAL_INTERVAL - 1] if step % EVAL_INTERVAL == 0 else None
        event = "kd_end" if kd_iters and step == kd_iters else None
        yield step, train, loss, event


def run_header(name: str, root: Path) -> dict:
    """Trainer._run_header for these args."""
    args = run_args(name, root)
    salt = bool(args["kd_teacher_load"] and args["kd_iters"])
    header = {k: args[k] for k in ("train_iters", "global_batch_size", "seq_length")}
    header.update(
        mode="salt" if salt else "baseline",
        name=args["wandb_exp_name"] or name,
        num_parameters=123456,
        kd_teacher_load=args["kd_teacher_load"],
        kd_iters=args["kd_iters"] or 0,
        kd_alpha=args["kd_alpha"] if salt else None,
        kd_temperature=args["kd_temperature"] if salt else None,
        kd_top_k=args["kd_top_k"],
        kd_schedule=args["kd_schedule"] if salt else None,
        kd_data_path=args["kd_data_path"],
        kd_data_selection=args["kd_data_selection"],
    )
    return header


def write_metrics(name: str, root: Path, crash_at: int | None = None) -> Path:
    """metrics.jsonl as the trainer writes it; with ``crash_at``, the run dies after logging
    (bogus values) at steps ``crash_at`` and ``crash_at + 10`` and resumes from its checkpoint
    at ``crash_at - 50`` (the crashed launch logged every 10 steps, say)."""
    log = MetricsLog(root / name)
    log.write("run", 0, run_header(name, root))
    for step, train, loss, event in history(name):
        if crash_at is not None and step == crash_at:
            # What the crashed launch logged past its last checkpoint (then gets dropped).
            for bogus_step in (step, step + 10):
                log.write("train", bogus_step, {**train, "lm loss": 99.0})
                log.write("eval", bogus_step, {"lm loss": 0.0, "train time (s)": 1.0})
            log = MetricsLog(root / name, resume_iteration=crash_at - LOG_INTERVAL)
            log.write("run", crash_at - LOG_INTERVAL, run_header(name, root))
        log.write("train", step, train)
        if loss is not None:
            log.write("eval", step, {"lm loss": loss, "train time (s)": train["train time (s)"]})
        if event:  # released before step kd_iters + 1, after that step's log and eval
            log.write("event", step, {"event": event, "teacher bytes freed": 4096})
    return root / name


@pytest.fixture(scope="module")
def jsonl_runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {
        "base": write_metrics("base", root),
        "salt-a": write_metrics("salt-a", root, crash_at=350),
        "salt-b": write_metrics("salt-b", root),
    }


def load_tool():
    spec = importlib.util.spec_from_file_location("compare_runs_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def table_cells(markdown: str) -> dict[str, dict[str, str]]:
    """The markdown table as {run: {column: cell}}."""
    lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[1:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header, cells, strict=True))
    return rows


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_table_numbers_and_png(jsonl_runs, tmp_path, capsys):
    out = tmp_path / "report" / "cmp"
    tool = load_tool()
    rc = tool.main([str(jsonl_runs[n]) for n in ("base", "salt-a", "salt-b")] + ["--out", str(out)])
    stdout = capsys.readouterr().out
    assert rc == 0
    markdown = (tmp_path / "report" / "cmp.md").read_text()
    assert markdown in stdout  # the table is printed too
    rows = table_cells(markdown)
    assert list(rows) == ["base (baseline)", "salt-a", "salt-b"]

    base, a, b = rows["base (baseline)"], rows["salt-a"], rows["salt-b"]
    assert (base["final val loss"], base["Δ vs baseline"]) == ("3.6500", "+0.0000")
    assert (base["reaches at step"], base["% of baseline steps"]) == ("1000", "100.0%")
    assert base["KD α"] == base["n_KD"] == base["KD data"] == "—"
    assert base["train time"] == "16.7 min"  # 1000 steps x 1 s

    # salt-a: 3.65 at step 700 (equal counts as reaching); clock 200 x 1.25 s + 500 x 1 s.
    assert (a["final val loss"], a["Δ vs baseline"]) == ("3.5000", "-0.1500")
    assert (a["reaches at step"], a["% of baseline steps"]) == ("700", "70.0%")
    assert (a["reaches at time"], a["% of baseline time"]) == ("12.5 min", "75.0%")
    assert (a["KD α"], a["KD T"], a["KD top-k"], a["KD schedule"]) == (
        "0.5",
        "1",
        "all",
        "constant",
    )
    assert (a["n_KD"], a["KD data"], a["steps"]) == ("200", "main data", "1000")

    assert (b["final val loss"], b["Δ vs baseline"]) == ("3.7000", "+0.0500")
    for column in (
        "reaches at step",
        "% of baseline steps",
        "reaches at time",
        "% of baseline time",
    ):
        assert b[column] == "never"
    assert (b["KD α"], b["KD T"], b["KD top-k"], b["KD schedule"]) == ("0.8", "2", "8", "linear")
    assert (b["n_KD"], b["KD data"]) == ("400", "`top:0.5`")

    assert "salt-a reaches the baseline's final validation loss 3.6500 at step 700" in markdown
    assert "salt-b never reaches" in markdown
    assert "every 100 steps" in markdown  # the granularity is stated
    assert "no interpolation" in markdown

    png = tmp_path / "report" / "cmp.png"
    width, height = png_size(png)
    assert 1000 <= width <= 2500 and 800 <= height <= 2000
    import matplotlib.image

    pixels = matplotlib.image.imread(png)
    assert pixels.std() > 0.05  # something was drawn
    assert sorted(p.name for p in png.parent.iterdir()) == ["cmp.md", "cmp.png"]  # no temp files


def test_resume_and_duplicates_keep_the_last_record(jsonl_runs, tmp_path):
    run = read_metrics_jsonl(jsonl_runs["salt-a"] / "metrics.jsonl")
    # The crashed launch's step-350 records were dropped on resume; the relaunch's kept.
    assert [p.value for p in run.val_loss] == SALT_A_EVAL
    assert run.train_loss[6].iteration == 350 and run.train_loss[6].value != 99.0
    assert run.kd_end == 200 and run.kd_phase_end == 200
    assert run.settings["kd_iters"] == 200

    # An iteration logged twice without a truncation in between: the last one wins.
    path = tmp_path / "dup" / "metrics.jsonl"
    path.parent.mkdir()
    path.write_text((jsonl_runs["base"] / "metrics.jsonl").read_text())
    MetricsLog(path.parent).write("eval", 1000, {"lm loss": 3.5, "train time (s)": 1000.0})
    assert read_metrics_jsonl(path).final_val.value == 3.5
    assert len(read_metrics_jsonl(path).val_loss) == 10


def test_truncated_last_line_is_skipped(jsonl_runs, tmp_path, capsys):
    path = tmp_path / "cut" / "metrics.jsonl"
    path.parent.mkdir()
    path.write_text((jsonl_runs["base"] / "metrics.jsonl").read_text() + '{"kind": "tra')
    assert read_metrics_jsonl(path).final_val.value == 3.65
    assert "truncated last line" in capsys.readouterr().err


WANDB_WRITER = textwrap.dedent(
    """
    import json, sys
    import wandb

    for spec in json.load(open(sys.argv[1])):
        run = wandb.init(
            mode="offline", dir=spec["dir"], project="salt-test", name=spec["name"],
            group="g", tags=spec["tags"], config=spec["config"],
            settings=wandb.Settings(silent=True, console="off", x_disable_stats=True),
        )
        for step, values in spec["rows"]:
            run.log(values, step=step)
        run.finish()
    """
)


def wandb_rows(name: str, crash_at: int | None = None):
    """The trainer's wandb.log calls for run ``name``; with ``crash_at``, two launches."""
    launches, rows = [], []
    for step, train, loss, event in history(name):
        if crash_at is not None and step == crash_at:
            bogus = {"train/lm loss": 99.0, "valid/lm loss": 0.0}
            launches.append(rows + [[step, bogus], [step + 10, bogus]])
            rows = []
        # What monitor.RunLog sends wandb for the records metrics.jsonl gets.
        rows.append([step, wandb_view("train", train)])
        if loss is not None:
            rows.append([step, wandb_view("eval", {"lm loss": loss, "train time (s)": 0.0})])
        if event:
            rows.append([step, wandb_view("event", {"event": event, "teacher bytes freed": 1})])
    return launches + [rows]


def test_wandb_view_keeps_the_names_the_reader_reads():
    assert wandb_view("train", {"lm loss": 3.0, "train time (s)": 5.0}) == {
        "train/lm loss": 3.0,
        "train/train time (s)": 5.0,
    }
    assert wandb_view("eval", {"lm loss": 2.5, "train time (s)": 5.0}) == {"valid/lm loss": 2.5}
    assert wandb_view("event", {"event": "kd_end", "teacher bytes freed": 8}) == {
        "kd/teacher_released": 1
    }
    assert wandb_view("run", {"mode": "salt"}) == {}  # wandb's config carries the header


def test_wandb_offline_runs_give_the_same_table(jsonl_runs, tmp_path):
    root = jsonl_runs["base"].parent
    specs = []
    for name in ("base", "salt-a"):
        args = run_args(name, root)
        salt = bool(args["kd_teacher_load"])
        for rows in wandb_rows(name, crash_at=350 if name == "salt-a" else None):
            specs.append(
                dict(
                    dir=str(tmp_path / name),  # wandb writes {dir}/wandb/offline-run-*
                    name=f"random-name-{len(specs)}",
                    tags=["salt" if salt else "baseline"],
                    config=args,
                    rows=rows,
                )
            )
    (tmp_path / "specs.json").write_text(json.dumps(specs))
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    subprocess.run(
        [sys.executable, "-c", WANDB_WRITER, str(tmp_path / "specs.json")],
        check=True,
        env=env,
        timeout=120,
        cwd=tmp_path,
    )
    offline_runs = sorted((tmp_path / "salt-a" / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 2  # the crashed launch and the resumed one

    from_wandb = {
        "base": load_run(next((tmp_path / "base" / "wandb").glob("offline-run-*"))),
        "salt-a": load_run(tmp_path / "salt-a"),  # the run dir with wandb/ in it
    }
    for name, run in from_wandb.items():
        reference = read_metrics_jsonl(jsonl_runs[name] / "metrics.jsonl")
        assert (run.name, run.mode, run.settings) == (name, reference.mode, reference.settings)
        assert run.val_loss == reference.val_loss
        assert run.train_loss == reference.train_loss
        assert run.kd_weight == reference.kd_weight
        assert run.kd_end == reference.kd_end

    # The CLI on the wandb directories writes the table the jsonl runs give.
    reference = [read_metrics_jsonl(jsonl_runs[n] / "metrics.jsonl") for n in ("base", "salt-a")]
    expected = markdown_table(compare(reference, reference[0]))
    out = tmp_path / "from_wandb"
    wandb_dirs = [str(tmp_path / "base" / "wandb"), str(offline_runs[0].parent)]
    assert load_tool().main([*wandb_dirs, "--out", str(out)]) == 0
    assert table_cells(out.with_suffix(".md").read_text()) == table_cells(expected)
    assert table_cells(expected)["salt-a"]["% of baseline steps"] == "70.0%"
    png_size(out.with_suffix(".png"))


def test_explicit_baseline(jsonl_runs, tmp_path, capsys):
    # --baseline not among the RUN_DIRs: it is added; the numbers match the auto-detected run.
    out = tmp_path / "cmp"
    salts = [str(jsonl_runs["salt-a"]), str(jsonl_runs["salt-b"])]
    assert load_tool().main([*salts, "--baseline", str(jsonl_runs["base"]), "--out", str(out)]) == 0
    rows = table_cells(out.with_suffix(".md").read_text())
    assert list(rows) == ["base (baseline)", "salt-a", "salt-b"]
    assert rows["salt-a"]["% of baseline steps"] == "70.0%"
    capsys.readouterr()

    # salt-b as the baseline: its final 3.70 is first reached by salt-a at step 600 (3.70),
    # after 200 x 1.25 s + 400 x 1 s = 650 s of salt-b's 400 x 1.5 s + 600 x 1 s = 1200 s.
    a, b = (read_metrics_jsonl(jsonl_runs[n] / "metrics.jsonl") for n in ("salt-a", "salt-b"))
    rows = table_cells(markdown_table(compare([a, b], pick_baseline([a, b], b))))
    assert (rows["salt-a"]["reaches at step"], rows["salt-a"]["% of baseline steps"]) == (
        "600",
        "60.0%",
    )
    assert rows["salt-a"]["% of baseline time"] == f"{100 * 650 / 1200:.1f}%"
    assert rows["salt-b (baseline)"]["% of baseline steps"] == "100.0%"


def error_of(capsys, argv) -> str:
    assert load_tool().main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err.strip()


def test_errors_are_one_line_and_write_nothing(jsonl_runs, tmp_path, capsys):
    out = tmp_path / "out" / "cmp"
    base, a, b = (str(jsonl_runs[n]) for n in ("base", "salt-a", "salt-b"))

    empty = tmp_path / "empty"
    empty.mkdir()
    err = error_of(capsys, [base, str(empty), "--out", str(out)])
    assert err.startswith("compare_runs: error: ") and str(empty) in err
    assert "no metrics.jsonl and no wandb run" in err

    assert "no such file" in error_of(capsys, [base, str(tmp_path / "missing")])

    no_eval = tmp_path / "no_eval"
    log = MetricsLog(no_eval)
    log.write("run", 0, run_header("salt-a", tmp_path))
    log.write("train", 50, {"lm loss": 5.0, "train time (s)": 50.0})
    err = error_of(capsys, [base, str(no_eval), "--out", str(out)])
    assert "no validation (eval) records" in err and str(no_eval) in err

    err = error_of(capsys, [a, b, "--out", str(out)])
    assert "no baseline" in err and "--baseline" in err

    twin = tmp_path / "twin"
    twin.mkdir()
    (twin / "metrics.jsonl").write_text((jsonl_runs["base"] / "metrics.jsonl").read_text())
    err = error_of(capsys, [base, str(twin), a, "--out", str(out)])
    assert "2 baseline runs" in err and "--baseline" in err

    bad = tmp_path / "bad"
    bad.mkdir()
    lines = (jsonl_runs["salt-b"] / "metrics.jsonl").read_text().splitlines(keepends=True)
    lines[2] = '{"kind": "train", "iteration": 100, "lm_loss": 4.0,\n'
    (bad / "metrics.jsonl").write_text("".join(lines))
    err = error_of(capsys, [base, str(bad), "--out", str(out)])
    assert f"{bad / 'metrics.jsonl'}:3: malformed metrics line" in err

    lines[2] = '{"kind": "eval", "lm_loss": 4.0}\n'
    (bad / "metrics.jsonl").write_text("".join(lines))
    err = error_of(capsys, [base, str(bad), "--out", str(out)])
    assert f"{bad / 'metrics.jsonl'}:3: malformed metrics line" in err and "iteration" in err

    not_wandb = tmp_path / "junk" / "run-x.wandb"
    not_wandb.parent.mkdir()
    not_wandb.write_bytes(b"not a wandb file")
    err = error_of(capsys, [base, str(not_wandb), "--out", str(out)])
    assert str(not_wandb) in err and "cannot read wandb run" in err

    assert not out.parent.exists()  # no half-written outputs


def test_cli_script(jsonl_runs, tmp_path):
    out = tmp_path / "cli"
    result = subprocess.run(
        [sys.executable, str(TOOL), *(str(p) for p in jsonl_runs.values()), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "| salt-a | salt |" in result.stdout
    assert f"wrote {out}.md and {out}.png" in result.stdout
    png_size(out.with_suffix(".png"))


def test_without_matplotlib_says_how_to_install(jsonl_runs, tmp_path):
    """A plain `pip install -e .` has no matplotlib: one line saying how to get it."""
    hide = tmp_path / "no_matplotlib" / "matplotlib"
    hide.mkdir(parents=True)
    (hide / "__init__.py").write_text("raise ImportError(\"No module named 'matplotlib'\")\n")
    env = dict(os.environ, PYTHONPATH=f"{hide.parent}{os.pathsep}{REPO}")
    out = tmp_path / "cmp"
    result = subprocess.run(
        [sys.executable, str(TOOL), *(str(p) for p in jsonl_runs.values()), "--out", str(out)],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "compare_runs: error: the plot needs matplotlib, which is not installed: "
        "pip install 'megatron-salt[plot]' (or pip install matplotlib)"
    ]
    assert not out.with_suffix(".md").exists()


def test_stage_times_section_names_the_machine(jsonl_runs, tmp_path, capsys):
    """The time_stage.sh script's lines end up as a table with the machine they ran on."""
    times = tmp_path / "stage_times.tsv"
    env = {**os.environ, "STAGE_TIMES": str(times)}
    script = Path(__file__).resolve().parents[1] / "examples" / "tiny_cpu" / "time_stage.sh"
    for name, command in (("corpus", "true"), ("teacher", "sleep 0.2"), ("corpus", "true")):
        subprocess.run([str(script), name, "sh", "-c", command], check=True, env=env)
    assert subprocess.run([str(script), "broken", "false"], env=env).returncode != 0
    with times.open("a") as f:
        f.write("# precision\tfp32\n")

    out = tmp_path / "cmp"
    base, a = str(jsonl_runs["base"]), str(jsonl_runs["salt-a"])
    assert load_tool().main([base, a, "--out", str(out), "--stage-times", str(times)]) == 0
    markdown = out.with_suffix(".md").read_text()
    section = markdown[markdown.index("## Machine and time per stage") :]
    assert "- precision: fp32" in section and "- cores: " in section and "- cpu: " in section
    rows = [line for line in section.splitlines() if line.startswith("| ") and "stage" not in line]
    # A stage timed twice keeps its last time; a failed stage is not recorded.
    assert [row.split("|")[1].strip() for row in rows] == ["teacher", "corpus", "**total**"]
    teacher_s = float(rows[0].split("|")[2].split()[0])
    assert 0.2 <= teacher_s < 5

    times.write_text("teacher\tslow\n")
    err = error_of(capsys, [base, "--out", str(tmp_path / "bad"), "--stage-times", str(times)])
    assert f"{times}:1: expected 'NAME<TAB>SECONDS'" in err
