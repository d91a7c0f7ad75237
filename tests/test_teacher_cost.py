"""tools/compare_runs.py --count-teacher-cost / --scoring-cost: the teacher's pretraining and
the scoring job added to SALT's compute to reach the baseline (real metrics.jsonl files)."""

from __future__ import annotations

import numpy as np
import pytest
from test_compare_runs import (
    RUNS,
    SALT_A_EVAL,
    load_tool,
    table_cells,
    write_metrics,
)

from megatron_salt.monitor import MetricsLog
from megatron_salt.selection.sidecar import ScoreHeader, write_scores

PARAMS, TEACHER_PARAMS, TOKENS = 123456, 20000, 16 * 128  # run headers of test_compare_runs
TEACHER_STEPS, TEACHER_SECONDS_PER_STEP = 300, 0.5
SCORING_FLOPS, SCORING_SECONDS = 4.0e11, 120.0

# A SALT_DS run: salt-a's curve and KD phase, its KD data selected by SLM scores.
RUNS.setdefault(
    "salt-ds",
    (
        SALT_A_EVAL,
        1.25,
        dict(
            kd_teacher_load="/ckpt/teacher",
            kd_iters=200,
            kd_data_path=["/data/demo_text_document"],
            kd_data_selection="top:0.5",
        ),
    ),
)


def write_teacher(root) -> str:
    """The teacher's own pretraining run, as the trainer logs it."""
    log = MetricsLog(root / "teacher")
    header = dict(
        mode="baseline", name="teacher", train_iters=TEACHER_STEPS, global_batch_size=16,
        seq_length=128, num_parameters=TEACHER_PARAMS, kd_teacher_load=None, kd_iters=0,
    )  # fmt: skip
    log.write("run", 0, header)
    for step in range(50, TEACHER_STEPS + 1, 50):
        clock = step * TEACHER_SECONDS_PER_STEP
        log.write("train", step, {"lm loss": 5.0, "train time (s)": clock})
        log.write("eval", step, {"lm loss": 5.0 - step / 1000, "train time (s)": clock})
    return str(root / "teacher")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cost")
    scored = str(root / "data_text_document")
    header = ScoreHeader(
        "ckpt", 1, "f", 10, "median", 128, "idx", 3, 3,
        scored_tokens=10**6, scoring_seconds=SCORING_SECONDS, scoring_world_size=1,
        scoring_flops=SCORING_FLOPS,
    )  # fmt: skip
    write_scores(scored, np.zeros(3, np.float32), header)
    return {
        **{name: str(write_metrics(name, root)) for name in ("base", "salt-a", "salt-ds")},
        "teacher": write_teacher(root),
        "scored": scored,
    }


def cost_table(markdown: str) -> dict[str, dict[str, str]]:
    return table_cells(markdown.split("## Compute to reach the baseline, teacher cost counted")[1])


def test_teacher_and_scoring_cost_are_added_to_salt(runs, tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = [runs["base"], runs["salt-a"], runs["salt-ds"], "--out", str(out)]
    argv += ["--count-teacher-cost", runs["teacher"], "--scoring-cost", runs["scored"]]
    assert load_tool().main(argv) == 0
    markdown = (tmp_path / "cmp.md").read_text()
    assert markdown in capsys.readouterr().out
    rows = cost_table(markdown)

    base_flops = 6 * PARAMS * 1000 * TOKENS
    base = rows["base (baseline)"]
    assert (base["reaches at step"], base["student FLOPs"]) == ("1000", f"{base_flops:.3g}")
    assert base["teacher pretraining"] == base["scoring"] == "—"
    assert (base["% of baseline FLOPs"], base["% of baseline time"]) == ("100.0%", "100.0%")

    # salt-a reaches at step 700 after 750 s (200 KD steps at 1.25 s, 500 at 1 s).
    student = 6 * PARAMS * 700 * TOKENS
    kd_forward = 2 * TEACHER_PARAMS * 200 * TOKENS
    pretrain = 6 * TEACHER_PARAMS * TEACHER_STEPS * TOKENS
    teacher_seconds = TEACHER_STEPS * TEACHER_SECONDS_PER_STEP
    a = rows["salt-a"]
    assert (a["student FLOPs"], a["teacher fwd (KD)"], a["teacher pretraining"]) == (
        f"{student:.3g}",
        f"{kd_forward:.3g}",
        f"{pretrain:.3g}",
    )
    assert a["scoring"] == "—"  # no KD data selection
    total = student + kd_forward + pretrain
    assert a["total FLOPs"] == f"{total:.3g}"
    assert a["% of baseline FLOPs"] == f"{100 * total / base_flops:.1f}%"
    assert a["% of baseline time"] == f"{100 * (750 + teacher_seconds) / 1000:.1f}%"  # 90.0%

    ds = rows["salt-ds"]
    assert ds["scoring"] == f"{SCORING_FLOPS:.3g}"
    total_ds = total + SCORING_FLOPS
    assert ds["% of baseline FLOPs"] == f"{100 * total_ds / base_flops:.1f}%"
    assert ds["% of baseline time"] == (
        f"{100 * (750 + teacher_seconds + SCORING_SECONDS) / 1000:.1f}%"
    )  # 102.0%: with its teacher and scoring counted, SALT_DS no longer saves time here
    assert "the teacher run's training time and the scoring job's wall-clock" in markdown
    final_teacher = 5.0 - TEACHER_STEPS // 50 * 50 / 1000
    assert (
        f"The teacher's final validation loss is {final_teacher:.4f} "
        "against the baseline's 3.6500, " in markdown
    )
    assert ("worse than the baseline student's" in markdown) == (final_teacher > 3.65)


def test_without_scoring_cost_salt_ds_rows_say_so(runs, tmp_path, capsys):
    argv = [runs["base"], runs["salt-ds"], "--out", str(tmp_path / "c")]
    assert load_tool().main([*argv, "--count-teacher-cost", runs["teacher"]]) == 0
    rows = cost_table((tmp_path / "c.md").read_text())
    assert rows["salt-ds"]["scoring"] == "not given"
    assert rows["salt-ds"]["total FLOPs"] == "n/a"


def test_cost_errors_are_one_line_and_write_nothing(runs, tmp_path, capsys):
    tool = load_tool()
    out = tmp_path / "e" / "cmp"
    argv = [runs["base"], runs["salt-ds"], "--out", str(out)]
    assert tool.main([*argv, "--scoring-cost", runs["scored"]]) == 2
    assert capsys.readouterr().err == (
        "compare_runs: error: --scoring-cost needs --count-teacher-cost\n"
    )
    old = str(tmp_path / "old_text_document")
    write_scores(
        old, np.zeros(2, np.float32), ScoreHeader("c", 1, "f", 10, "median", 128, "i", 2, 2)
    )
    argv += ["--count-teacher-cost", runs["teacher"], "--scoring-cost", old]
    assert tool.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "records no scoring cost" in err
    assert tool.main([*argv[:4], "--count-teacher-cost", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.startswith("compare_runs: error: ")
    assert not out.parent.exists()
