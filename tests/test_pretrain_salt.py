"""pretrain_salt.py end to end: real GPTModel, real schedules, real gloo ranks, real data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from salt_runs import (
    REPO,
    RESUME_COMPARED,
    pretrain_on,
    records,
    salt_args,
    student_args,
)

EXACT_LAYOUT = ["--hidden-dropout", "0", "--attention-dropout", "0"]
COMPARED = ("lm_loss", "kd_loss", "total_loss", "teacher_lm_loss", "grad_norm")

LAYOUTS = {
    "tp2-teacher-tp2": ["--tensor-model-parallel-size", "2"],
    "tp2-teacher-tp1": [
        "--tensor-model-parallel-size", "2", "--kd-teacher-tensor-model-parallel-size", "1",
    ],
    "pp2-teacher-pp2": [
        "--pipeline-model-parallel-size", "2", "--kd-teacher-pipeline-model-parallel-size", "2",
    ],
    "pp2-teacher-pp1-on-last-stage": ["--pipeline-model-parallel-size", "2"],
}  # fmt: skip


@pytest.fixture(scope="module")
def single_process_salt(tiny_data, checkpoints, tmp_path_factory):
    run = tmp_path_factory.mktemp("salt_tp1")
    argv = salt_args(tiny_data, checkpoints, run, "--train-iters", "3", "--kd-iters", "3")
    pretrain_on(1, [*argv, *EXACT_LAYOUT])
    return records(run)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_salt_loss_in_parallel_layouts_equals_single_process(
    tiny_data, checkpoints, single_process_salt, tmp_path, layout
):
    argv = salt_args(tiny_data, checkpoints, tmp_path, "--train-iters", "3", "--kd-iters", "3")
    pretrain_on(2, [*argv, *EXACT_LAYOUT, *LAYOUTS[layout]])
    got = records(tmp_path)
    assert [r["iteration"] for r in got] == [1, 2, 3]
    for ref, rec in zip(single_process_salt, got, strict=True):
        assert rec["kd_weight"] == ref["kd_weight"] == 0.6
        for key in COMPARED:
            assert rec[key] == pytest.approx(ref[key], rel=2e-5), (rec["iteration"], key)
        # argmax agreement may flip on exact ties only
        assert rec["top1_agreement"] == pytest.approx(ref["top1_agreement"], abs=1 / 256)


def test_kd_weight_schedule_and_teacher_release(tiny_data, checkpoints, tmp_path):
    argv = salt_args(
        tiny_data, checkpoints, tmp_path,
        "--train-iters", "5", "--kd-iters", "3", "--kd-schedule", "linear",
    )  # fmt: skip
    summary = pretrain_on(1, argv)
    train = records(tmp_path)
    weights = [r["kd_weight"] for r in train]
    assert weights == pytest.approx([0.6, 0.4, 0.2, 0.0, 0.0])
    assert all("kd_loss" in r and "teacher_lm_loss" in r for r in train[:3])
    assert not any("kd_loss" in r or "teacher_lm_loss" in r for r in train[3:])
    (event,) = records(tmp_path, "event")
    assert event["event"] == "kd_end" and event["iteration"] == 3
    assert event["teacher_bytes_freed"] > 0
    assert summary["kd_released_at"] == 3
    # The student's checkpoint holds the student only.
    args = json.loads(next(tmp_path.glob("iter_*/run_args.json")).read_text())
    assert args["kd_teacher_load"]
    from megatron.core.dist_checkpointing.serialization import load_tensors_metadata

    keys = set(load_tensors_metadata(str(next(tmp_path.glob("iter_*")))))
    init_keys = set(load_tensors_metadata(str(next(checkpoints[1].glob("iter_*")))))
    assert {k for k in keys if not k.startswith("optimizer")} == {
        k for k in init_keys if not k.startswith("optimizer")
    }


def test_alpha_zero_trains_exactly_like_the_baseline(tiny_data, checkpoints, tmp_path):
    pretrain_on(1, student_args(tiny_data, checkpoints, tmp_path / "base", "--train-iters", "4"))
    zero = salt_args(tiny_data, checkpoints, tmp_path / "zero", "--train-iters", "4")
    pretrain_on(1, [*zero, "--kd-iters", "2", "--kd-alpha", "0"])
    base_train, zero_train = records(tmp_path / "base"), records(tmp_path / "zero")
    for key in ("lm_loss", "grad_norm", "learning_rate"):
        assert [r[key] for r in zero_train] == [r[key] for r in base_train], key
    base_eval, zero_eval = records(tmp_path / "base", "eval"), records(tmp_path / "zero", "eval")
    assert zero_eval[-1]["lm_loss"] == base_eval[-1]["lm_loss"]
    # The teacher did run (its loss was measured) but carried no weight.
    assert "teacher_lm_loss" in zero_train[0] and zero_train[0]["kd_weight"] == 0.0


def test_resume_mid_kd_and_after_switch_is_bitwise(tiny_data, checkpoints, tmp_path):
    """PP=2 with a PP=2 teacher and dropout on: stop at 2 (mid-KD) and 5 (after the switch)."""
    layout = [
        "--pipeline-model-parallel-size",
        "2",
        "--kd-teacher-pipeline-model-parallel-size",
        "2",
    ]
    kd = ["--train-iters", "7", "--kd-iters", "3", "--eval-interval", "7"]
    full = salt_args(tiny_data, checkpoints, tmp_path / "full", *kd, *layout)
    pretrain_on(2, full)

    parts = tmp_path / "parts"
    first = salt_args(tiny_data, checkpoints, parts, *kd, *layout, "--exit-interval", "2")
    pretrain_on(2, first)
    # Later runs resume from their own checkpoints (--load = --save), as a relaunch would.
    resumed = [a for a in first if a != "--finetune"]
    resumed[resumed.index("--load") + 1] = str(parts)
    pretrain_on(2, [*resumed[:-2], "--exit-interval", "5"])
    summary = pretrain_on(2, resumed[:-2])
    assert summary["kd_released_at"] == 3

    full_train, part_train = records(tmp_path / "full"), records(parts)
    assert [r["iteration"] for r in part_train] == list(range(1, 8))
    for ref, rec in zip(full_train, part_train, strict=True):
        for key in RESUME_COMPARED:
            assert rec.get(key) == ref.get(key), (rec["iteration"], key)
    assert (
        records(parts, "eval")[-1]["lm_loss"] == records(tmp_path / "full", "eval")[-1]["lm_loss"]
    )


def test_distributed_optimizer_resume_is_bitwise(tiny_data, checkpoints, tmp_path):
    """DP=2 with --use-distributed-optimizer, a TP=1 teacher replicated over DP."""
    flags = ["--train-iters", "5", "--kd-iters", "2", "--use-distributed-optimizer"]
    flags += ["--kd-teacher-tensor-model-parallel-size", "1", "--eval-interval", "5"]
    pretrain_on(2, salt_args(tiny_data, checkpoints, tmp_path / "full", *flags))
    parts = tmp_path / "parts"
    first = salt_args(tiny_data, checkpoints, parts, *flags)
    pretrain_on(2, [*first, "--exit-interval", "3"])
    resumed = [a for a in first if a != "--finetune"]
    resumed[resumed.index("--load") + 1] = str(parts)
    pretrain_on(2, resumed)
    full_train, part_train = records(tmp_path / "full"), records(parts)
    assert [r["iteration"] for r in part_train] == list(range(1, 6))
    for ref, rec in zip(full_train, part_train, strict=True):
        for key in RESUME_COMPARED:
            assert rec.get(key) == ref.get(key), (rec["iteration"], key)


def test_killed_run_resumes_from_last_checkpoint_identically(tiny_data, checkpoints, tmp_path):
    """kill -9 a real `python pretrain_salt.py` mid-run, relaunch it, compare with a clean run."""
    kd = ["--train-iters", "8", "--kd-iters", "3", "--save-interval", "2", "--eval-interval", "8"]
    clean = salt_args(tiny_data, checkpoints, tmp_path / "clean", *kd)
    pretrain_on(1, clean)

    killed_dir = tmp_path / "killed"
    argv = salt_args(tiny_data, checkpoints, killed_dir, *kd)
    # One intra-op thread, like the forked ranks: CPU reductions are only bitwise
    # reproducible at a fixed thread count.
    env = dict(
        os.environ, WORLD_SIZE="1", RANK="0", MASTER_PORT=str(_free_port()), OMP_NUM_THREADS="1"
    )
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "pretrain_salt.py"), *argv],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,  # so the kill takes its helper processes too
    )  # fmt: skip
    tracker = killed_dir / "latest_checkpointed_iteration.txt"
    deadline = time.time() + 180
    while time.time() < deadline and not (tracker.exists() and tracker.read_text().strip() == "4"):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # kill -9 the job and its helper processes
    proc.wait()
    assert tracker.read_text().strip() in {"4", "6"}, "the run was not killed mid-way"

    relaunch = [a for a in argv if a != "--finetune"]
    relaunch[relaunch.index("--load") + 1] = str(killed_dir)
    pretrain_on(1, relaunch)
    ref, got = records(tmp_path / "clean"), records(killed_dir)
    assert [r["iteration"] for r in got] == list(range(1, 9))
    for a, b in zip(ref, got, strict=True):
        for key in RESUME_COMPARED:
            assert a.get(key) == b.get(key), (a["iteration"], key)


def _free_port() -> int:
    from megatron_salt.testing import free_port

    return free_port()


def test_sigterm_with_exit_signal_handler_saves_and_exits(tiny_data, checkpoints, tmp_path):
    run_dir = tmp_path / "run"
    argv = salt_args(tiny_data, checkpoints, run_dir, "--train-iters", "500", "--kd-iters", "3")
    argv += ["--exit-signal-handler", "--eval-interval", "1000"]
    env = dict(os.environ, WORLD_SIZE="1", RANK="0", MASTER_PORT=str(_free_port()))
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "pretrain_salt.py"), *argv],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline and not (metrics.exists() and "kd_end" in metrics.read_text()):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    last = records(run_dir)[-1]["iteration"]
    assert 3 <= last < 500
    assert (run_dir / "latest_checkpointed_iteration.txt").read_text().strip() == str(last)
    assert f"exiting at iteration {last} (SIGTERM, --exit-signal-handler)" in out


def test_relaunch_after_a_crash_before_any_checkpoint_repairs_metrics(
    tiny_data, checkpoints, tmp_path
):
    """A crash mid-write leaves half a line; the next launch (not a resume) drops it."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    whole = json.dumps({"kind": "train", "iteration": 1, "time": 0.0, "lm_loss": 6.0})
    (run_dir / "metrics.jsonl").write_text(whole + '\n{"kind": "train", "iteration": 2, "lm_l')
    pretrain_on(1, student_args(tiny_data, checkpoints, run_dir, "--train-iters", "2"))
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert lines[0] == whole
    kinds = [json.loads(line)["kind"] for line in lines[1:]]  # every line parses
    assert kinds[0] == "run" and kinds.count("train") == 2
