"""Bad command lines end pretrain_salt.py with one line naming the flag (exit status 2)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from salt_runs import REPO, STUDENT, common_args, salt_args

from megatron_salt.training import loop
from megatron_salt.training.loop import main


@pytest.fixture(autouse=True)
def _no_training(monkeypatch):
    """These command lines must fail validation; never start a run in the pytest process."""

    def refuse(args):
        raise AssertionError("the command line passed validation")

    monkeypatch.setattr(loop, "pretrain", refuse)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("pretrain_salt.py: error: ")
    return err


def _base(tiny_data, tmp_path) -> list[str]:
    return [*STUDENT, *common_args(tiny_data, tmp_path / "run"), "--train-iters", "4"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (["--global-batch-size", "5"], "--global-batch-size 5 is not a multiple of"),
        (["--kd-iters", "2"], "--kd-iters needs --kd-teacher-load"),
        (["--kd-teacher-load", "/no/ckpt", "--kd-iters", "2"], "--kd-teacher-load /no/ckpt"),
        (["--min-lr", "1"], "--min-lr 1.0 exceeds --lr"),
        (["--fp8-format", "hybrid"], "--fp8-format needs --bf16"),
        (["--fp8-format", "hybrid", "--bf16"], "--fp8-format needs Transformer Engine"),
        (["--finetune"], "--finetune needs --load"),
        (["--exit-interval", "0"], "--exit-interval must be"),
        (["--lr-warmup-iters", "4"], "--lr-warmup-iters 4 must be below --lr-decay-iters 4"),
    ],
)  # fmt: skip
def test_bad_flags_are_one_line(tiny_data, tmp_path, capsys, extra, message):
    assert main([*_base(tiny_data, tmp_path), *extra]) == 2
    assert message in _one_line_error(capsys)


def test_missing_required_flag_and_missing_data(tiny_data, tmp_path, capsys):
    argv = _base(tiny_data, tmp_path)
    del argv[argv.index("--num-layers") : argv.index("--num-layers") + 2]
    assert main(argv) == 2
    assert "--num-layers" in _one_line_error(capsys)

    argv = _base(tiny_data, tmp_path)
    argv[argv.index("--data-path") + 1] = str(tmp_path / "nowhere_text_document")
    assert main(argv) == 2
    assert f"--data-path: {tmp_path / 'nowhere_text_document'}.bin does not exist" in (
        _one_line_error(capsys)
    )


def test_unsupported_teacher_layout_says_what_is_supported(
    tiny_data, checkpoints, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("WORLD_SIZE", "4")
    argv = salt_args(tiny_data, checkpoints, tmp_path, "--kd-iters", "2", "--train-iters", "4")
    argv += ["--pipeline-model-parallel-size", "4", "--num-layers", "4"]
    argv += ["--kd-teacher-pipeline-model-parallel-size", "2", "--global-batch-size", "2"]
    assert main(argv) == 2
    err = _one_line_error(capsys)
    assert "teacher PP=2 with student PP=4" in err and "supported:" in err

    argv = salt_args(tiny_data, checkpoints, tmp_path, "--kd-iters", "2", "--train-iters", "4")
    argv += ["--tensor-model-parallel-size", "2", "--kd-teacher-tensor-model-parallel-size", "4"]
    assert main(argv) == 2
    assert "teacher TP=4 does not divide the student's TP" in _one_line_error(capsys)


def test_teacher_with_another_tokenizer_is_refused(tiny_data, checkpoints, tmp_path):
    """Through the real CLI: the teacher's saved vocab differs from the student's tokenizer."""
    teacher = tmp_path / "other_teacher"
    shutil.copytree(checkpoints[0], teacher)
    (ckpt,) = teacher.glob("iter_*")
    config = json.loads((ckpt / "model_config.json").read_text())
    config["vocab_size"] = tiny_data.vocab_size + 37
    (ckpt / "model_config.json").write_text(json.dumps(config))
    # A checkpoint written that way, not a damaged one: its manifest matches.
    from megatron_salt.checkpoint_dir import write_manifest

    write_manifest(ckpt, int(ckpt.name.removeprefix("iter_")))
    argv = salt_args(tiny_data, checkpoints, tmp_path / "run", "--kd-iters", "2")
    argv[argv.index("--kd-teacher-load") + 1] = str(teacher)
    proc = subprocess.run(
        [sys.executable, str(REPO / "pretrain_salt.py"), *argv, "--train-iters", "2"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr
    assert last.startswith(f"pretrain_salt.py: error: --kd-teacher-load {teacher}")
    assert str(tiny_data.vocab_size + 37) in last and str(tiny_data.vocab_size) in last
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").glob("iter_*"))
