"""benchmarks/gpu_check.py: its --dry-run runs every section's code path at tiny sizes on CPU
(so a GPU lease is never spent on a crash), its accuracy check catches a wrong loss or
gradient, and bad flags give a one-line error."""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


@functools.cache
def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_dry_run_writes_a_report_with_every_number(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, str(SCRIPT), "--dry-run", "--out", str(out), "--peak-tflops", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert sorted(p.name for p in out.iterdir()) == [
        "gpu_check.json",
        "gpu_check.md",
        "gpu_check_runs.log",
    ]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["dry_run"] and report["machine"]["device"] == "cpu"
    sections = report["sections"]

    accuracy = sections["kd_loss_accuracy"]
    assert accuracy["status"] == "ok" and accuracy["passed"]
    checks = accuracy["checks"]
    assert {(c["loss"], c["dtype"], c["top_k"]) for c in checks} == {
        (loss, dtype, top_k)
        for loss in ("kd", "ce+kd")
        for dtype in ("fp32", "bf16")
        for top_k in (None, 64)
    }
    for c in checks:
        assert c["passed"] and 0 < c["loss_rel_err"] <= c["loss_tol"]
        assert 0 < c["grad_rel_err"] <= c["grad_tol"]

    bench = sections["kd_loss_benchmark"]
    assert bench["status"] == "ok"
    cases = {(c["dtype"], c["impl"]): c for c in bench["cases"]}
    for dtype in ("fp32", "bf16"):
        for impl in ("naive", "ours", "ours-kd+megatron-ce", "ours-fused"):
            case = cases[(dtype, impl)]
            assert case["status"] == "ok", case
            assert case["median_ms"] > 0 and case["peak_extra_mib"] >= 0
            assert case["repeats"] >= 3 and math.isfinite(case["loss_sum"])
        # the implementations compute the same function of the same inputs
        kd = [cases[(dtype, i)]["loss_sum"] for i in ("naive", "ours")]
        ce_kd = [cases[(dtype, i)]["loss_sum"] for i in ("ours-kd+megatron-ce", "ours-fused")]
        assert kd[0] == pytest.approx(kd[1], rel=1e-4)
        assert ce_kd[0] == pytest.approx(ce_kd[1], rel=1e-4)
    if not bench["modelopt_measured"]:
        assert ("modelopt" not in {impl for _, impl in cases}) and bench["modelopt"]

    step = sections["salt_step"]
    assert step["status"] == "ok", step
    assert [r["mode"] for r in step["runs"]] == ["baseline", "salt"]
    for mode in ("baseline", "salt"):
        m = step["modes"][mode]
        assert m["step_ms"] > 0 and m["tokens_per_s"] > 0 and m["intervals"] >= 1
        assert m["mfu"] == pytest.approx(m["achieved_tflops"] / 1.0)  # --peak-tflops 1
        assert 0 < m["ideal_step_ms_at_peak"]
    assert step["modes"]["baseline"]["teacher_share"] is None
    assert 0 < step["modes"]["salt"]["teacher_share"] < 1
    pair = step["pairs"]["bf16"]
    assert pair["flop_ideal"] > 1 and pair["measured_over_ideal"] > 0

    fp8 = sections["fp8"]
    assert fp8["status"] == "skipped" and "FP8 is not measured" in fp8["reason"]

    markdown = (out / "gpu_check.md").read_text()
    for text in (
        "| KD / CE+KD loss vs float64 (8 checks) | all passed;",
        "| loss [64, 300] bf16 | ours ",
        "| SALT / baseline (bf16) |",
        "| fp8 | skipped: Transformer Engine does not import here",
        "## kd_loss_accuracy: ok",
        "**All passed: True.**",
        "| 64 | 300 | bf16 | ours-fused |",
        "## salt_step: ok",
        "| salt |",
        "**measured / ideal",
        "## fp8: skipped",
    ):
        assert text in markdown
    # the summary table is printed last (a device call returns only the output's tail)
    start = markdown.index("## Summary")
    table = markdown[start : markdown.index("\n\n## ", start)].split("\n", 2)[2].strip()
    assert table.startswith("| check | result |")
    assert done.stdout.rstrip().endswith(table)


def _with_gradient_scaled(factor):
    """Same forward value as the student logits, gradient multiplied by ``factor``."""

    def scaled(student):
        return student + (student - student.detach()) * (factor - 1.0)

    return scaled


@pytest.mark.parametrize("which", ["kd", "ce+kd"])
def test_accuracy_check_fails_on_a_wrong_value_or_gradient(which):
    from megatron_salt.distill import vocab_parallel_kd_loss, vocab_parallel_salt_loss

    gpu_check = _gpu_check()
    args = (which, "bf16", 300, 2.0, 64, 16)

    def check(transform=lambda s: s):
        return gpu_check.check_accuracy(
            *args,
            seed=5,
            kd_fn=lambda s, t, **kw: vocab_parallel_kd_loss(transform(s), t, **kw),
            salt_fn=lambda s, t, labels, **kw: vocab_parallel_salt_loss(
                transform(s), t, labels, **kw
            ),
        )

    assert check()["passed"]
    # 1% off in the gradient only: the value still matches, bf16's rounding tolerance does not
    bad_grad = check(_with_gradient_scaled(1.01))
    assert not bad_grad["passed"] and bad_grad["loss_rel_err"] <= bad_grad["loss_tol"]
    assert bad_grad["grad_rel_err"] > bad_grad["grad_tol"]
    bad_value = check(lambda s: s * 1.01)
    assert not bad_value["passed"] and bad_value["loss_rel_err"] > bad_value["loss_tol"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--budget-s", "0"], "--budget-s must be > 0"),
        (["--peak-tflops", "-5"], "--peak-tflops must be > 0"),
        (["--out", "{file}"], "exists and is not a folder"),
        pytest.param(
            [],
            "no CUDA device here; use --dry-run",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="would run the GPU check"),
        ),
    ],
)
def test_bad_input_is_one_line(tmp_path, argv, message):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    argv = [arg.format(file=a_file) for arg in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out" / "gpu_check.json").exists()
