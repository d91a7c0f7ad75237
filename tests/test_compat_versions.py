"""Which patches each Megatron-Core release gets, the untested-version warning, a quiet log."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import warnings

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from salt_runs import REPO, STUDENT, TEACHER, common_args

from megatron_salt.compat import cpu, noise, versions


def test_each_release_gets_the_patches_it_needs():
    numbers = {v: [p.number for p in cpu.patches_for(Version(v))] for v in ("0.16.1", "0.19.2")}
    assert numbers == {"0.16.1": [1, 2, 3, 4, 5], "0.19.2": [1, 2, 3, 4, 5, 6]}
    assert set(versions.TESTED_MEGATRON_CORE) == set(numbers)


def test_setup_py_declares_the_supported_range():
    setup_py = (REPO / "setup.py").read_text()
    assert f'"megatron-core{versions.SUPPORTED_MEGATRON_CORE}"' in setup_py
    supported = SpecifierSet(versions.SUPPORTED_MEGATRON_CORE)
    assert all(Version(tested) in supported for tested in versions.TESTED_MEGATRON_CORE)


@pytest.mark.parametrize(("found", "warned"), [("0.18.2", True), ("0.19.2", False)])
def test_untested_release_gets_one_warning_naming_the_tested_ones(
    monkeypatch, caplog, found, warned
):
    monkeypatch.setattr(versions, "megatron_core_version", lambda: Version(found))
    versions.warn_if_untested.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="megatron_salt.compat.versions"):
            versions.warn_if_untested()
            versions.warn_if_untested()
    finally:
        versions.warn_if_untested.cache_clear()
    lines = [r.getMessage() for r in caplog.records]
    if warned:
        assert len(lines) == 1
        assert all(v in lines[0] for v in (*versions.TESTED_MEGATRON_CORE, found))
    else:
        assert lines == []


def test_noise_is_dropped_and_other_warnings_still_show(caplog):
    noise.filter_upstream_noise()
    with warnings.catch_warnings(record=True) as caught:
        noise.filter_upstream_noise()  # inside catch_warnings, as a test harness would
        warnings.warn("absl.logging is not installed. Using logging", UserWarning, stacklevel=1)
        warnings.warn("a real problem", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["a real problem"]

    gpt_logger = logging.getLogger("megatron.core.models.gpt.gpt_model")
    with caplog.at_level(logging.WARNING):
        gpt_logger.warning("GPTModel IS DEPRECATED. GPTModel is only accepting ...")
        gpt_logger.warning("a real problem in GPTModel")
    assert [r.getMessage() for r in caplog.records] == ["a real problem in GPTModel"]


def test_a_run_log_has_no_upstream_noise(tiny_data, tmp_path):
    """Train, save, resume and load as a teacher: nothing but our own lines in the log."""
    teacher = tmp_path / "teacher"

    def run(*argv: str) -> str:
        out = subprocess.run(
            [sys.executable, str(REPO / "pretrain_salt.py"), *argv],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:]
        return out.stdout + out.stderr

    log = run(*TEACHER, *common_args(tiny_data, teacher, "--train-iters", "2"))
    resume = ["--train-iters", "3", "--load", str(teacher)]
    log += run(*TEACHER, *common_args(tiny_data, teacher, *resume))
    log += run(
        *STUDENT,
        *common_args(tiny_data, tmp_path / "student", "--train-iters", "2"),
        "--kd-teacher-load", str(teacher), "--kd-iters", "1",
    )  # fmt: skip
    ours = re.compile(r"^(\[rank\d+\] | \[20\d\d-| validation loss)")
    foreign = [line for line in log.splitlines() if line.strip() and not ours.match(line)]
    assert foreign == []
