"""Checkpoints and results cross Megatron-Core versions (0.16.1 <-> the newest 0.19.x).

Needs a second interpreter whose environment has the other Megatron-Core release:
``SALT_OTHER_PYTHON``. ``make test-newest`` runs the suite on Python 3.12 / newest
0.19.x and points it at the default (3.11 / 0.16.1) venv; elsewhere these tests skip.
Both sides run the real ``pretrain_salt.py`` through torchrun, as a user would.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from salt_runs import REPO, RESUME_COMPARED, STUDENT, TEACHER, common_args, records

from megatron_salt.testing import free_port

OTHER_PYTHON = os.environ.get("SALT_OTHER_PYTHON")
pytestmark = pytest.mark.skipif(
    not OTHER_PYTHON, reason="needs SALT_OTHER_PYTHON (make test-newest sets it)"
)


def _megatron_core(python: str) -> str:
    code = "import importlib.metadata as m; print(m.version('megatron-core'))"
    return subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout


def _pretrain(python: str, nproc: int, argv: list[str]) -> None:
    command = [
        python, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
        "--master-port", str(free_port()), str(REPO / "pretrain_salt.py"), *argv,
    ]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"{python}: {out.stdout[-3000:]}\n{out.stderr[-3000:]}"


def _assert_same_training(run: Path, reference: Path) -> None:
    got, want = records(run), records(reference)
    assert [r["iteration"] for r in got] == [r["iteration"] for r in want]
    for rec, ref in zip(got, want, strict=True):
        for key in RESUME_COMPARED:
            assert rec.get(key) == ref.get(key), (run.name, rec["iteration"], key)


@pytest.fixture(scope="module")
def pythons() -> dict[str, str]:
    this, other = sys.executable, OTHER_PYTHON
    assert other is not None
    if _megatron_core(this) == _megatron_core(other):
        pytest.skip(f"both interpreters have megatron-core {_megatron_core(this).strip()}")
    return {"this": this, "other": other}


def test_checkpoints_and_losses_cross_versions(pythons, tiny_data, tmp_path):
    """Teacher, SALT at TP=2 and resume give the same losses, whichever version wrote what.

    Each version's SALT run loads the teacher the *other* version trained, and each
    resume continues a checkpoint the other version wrote.
    """
    teacher = {}
    for side, python in pythons.items():
        teacher[side] = tmp_path / f"teacher_{side}"
        argv = [*TEACHER, *common_args(tiny_data, teacher[side], "--train-iters", "6")]
        _pretrain(python, 1, argv)
    _assert_same_training(teacher["this"], teacher["other"])

    def salt(side: str, save: Path, *extra: str) -> list[str]:
        other_side = "other" if side == "this" else "this"
        return [
            *STUDENT, *common_args(tiny_data, save, "--train-iters", "6", *extra),
            "--tensor-model-parallel-size", "2", "--seed", "7",
            "--kd-teacher-load", str(teacher[other_side]), "--kd-iters", "4", "--kd-alpha", "0.5",
        ]  # fmt: skip

    full = {}
    for side, python in pythons.items():
        full[side] = tmp_path / f"salt_{side}"
        _pretrain(python, 2, salt(side, full[side]))
    _assert_same_training(full["this"], full["other"])

    for first, second in (("other", "this"), ("this", "other")):
        parts = tmp_path / f"resume_{first}_then_{second}"
        _pretrain(pythons[first], 2, salt(first, parts, "--exit-interval", "3"))
        _pretrain(pythons[second], 2, salt(second, parts, "--load", str(parts)))
        _assert_same_training(parts, full[second])
