"""Untrusted and damaged checkpoints: nothing from a checkpoint runs, damage is named in one line.

Every case drives the real command lines (``pretrain_salt.py``, ``tools/score_data.py``)
in a subprocess, on copies of the session's real checkpoints.
"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from salt_runs import REPO, salt_args, student_args

from megatron_salt.checkpoint_dir import resolve_checkpoint, write_manifest
from megatron_salt.testing import free_port


class _RunsShell:
    """A pickle that runs a shell command when loaded (what a hostile checkpoint carries)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def run_cli(script: str, argv: list[str], timeout: float = 240) -> tuple[int, str, str]:
    (result,) = run_clis([(script, argv)], timeout)
    return result


def run_clis(
    commands: list[tuple[str, list[str]]], timeout: float = 240
) -> list[tuple[int, str, str]]:
    """Run single-process command lines side by side; (exit status, stdout, stderr) each."""
    procs = []
    for script, argv in commands:
        env = dict(
            os.environ, WORLD_SIZE="1", RANK="0", MASTER_PORT=str(free_port()), OMP_NUM_THREADS="1"
        )
        env.pop("SALT_DEBUG", None)
        procs.append(
            subprocess.Popen(
                [sys.executable, str(REPO / script), *argv],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        results.append((proc.returncode, out, err))
    return results


def assert_one_line_error(rc: int, stderr: str, *fragments: str) -> str:
    assert rc == 2, stderr
    assert "Traceback" not in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    for fragment in fragments:
        assert fragment in last, (fragment, last)
    return last


def copy_checkpoint(src: Path, dest: Path) -> Path:
    """A copy of a checkpoint root; returns its latest iter_N directory."""
    shutil.copytree(src, dest)
    return resolve_checkpoint(dest)


def republish(ckpt: Path) -> None:
    """What a hostile author does: a manifest that matches the crafted files."""
    write_manifest(ckpt, int(ckpt.name.removeprefix("iter_")))


def craft_metadata(ckpt: Path, marker: Path) -> None:
    (ckpt / ".metadata").write_bytes(pickle.dumps(_RunsShell(f"touch {marker}")))
    republish(ckpt)


def craft_common(ckpt: Path, marker: Path) -> None:
    torch.save({"train_state": _RunsShell(f"touch {marker}")}, ckpt / "common.pt")
    republish(ckpt)


def test_the_crafted_files_do_run_code_when_unpickled_plainly(tmp_path, checkpoints):
    """The control: without the restricted loaders these files run their command."""
    ckpt = copy_checkpoint(checkpoints[0], tmp_path / "t")
    craft_metadata(ckpt, tmp_path / "m1")
    craft_common(ckpt, tmp_path / "m2")
    with open(ckpt / ".metadata", "rb") as f:
        pickle.load(f)
    torch.load(ckpt / "common.pt", weights_only=False)
    assert (tmp_path / "m1").exists() and (tmp_path / "m2").exists()


@pytest.mark.parametrize("craft", [craft_metadata, craft_common], ids=["metadata", "common_pt"])
def test_crafted_checkpoint_runs_no_code(craft, tiny_data, checkpoints, tmp_path):
    marker = tmp_path / "marker"
    student = copy_checkpoint(checkpoints[1], tmp_path / "student")
    craft(student, marker)
    teacher = copy_checkpoint(checkpoints[0], tmp_path / "teacher")
    craft(teacher, marker)
    resume = student_args(tiny_data, checkpoints, tmp_path / "run", "--train-iters", "2")
    resume[resume.index("--load") + 1] = str(tmp_path / "student")
    resume.remove("--finetune")
    salt = salt_args(tiny_data, checkpoints, tmp_path / "salt", "--train-iters", "2")
    salt[salt.index("--kd-teacher-load") + 1] = str(tmp_path / "teacher")
    score = ["--load", str(tmp_path / "teacher"), "--data-path", tiny_data.prefix]
    results = run_clis(
        [
            ("pretrain_salt.py", resume),  # --load (a resume)
            ("pretrain_salt.py", [*salt, "--kd-iters", "1"]),  # --kd-teacher-load
            ("tools/score_data.py", score),  # tools/score_data.py --load
        ]
    )
    name = ".metadata" if craft is craft_metadata else "common.pt"
    prefixes = (
        "pretrain_salt.py: error: --load",
        "pretrain_salt.py: error: --kd-teacher-load",
        "score_data.py: error: --load",
    )
    for (rc, _, err), prefix in zip(results, prefixes, strict=True):
        assert_one_line_error(rc, err, prefix, name, "refused", "system")
    assert not marker.exists()
    assert not Path(tiny_data.prefix + ".salt_scores.json").exists()


def test_every_unpickling_seam_of_dist_checkpointing_is_restricted(tmp_path, checkpoints):
    """The seams themselves refuse, not only the up-front checks (a crafted file may pass those)."""
    import io

    from megatron.core import dist_checkpointing
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    from megatron_salt.compat.safe_load import UnsafeCheckpointError, apply_safe_checkpoint_loading

    apply_safe_checkpoint_loading()
    good = resolve_checkpoint(checkpoints[0])
    assert FileSystemReader(str(good)).read_metadata().storage_data  # real metadata loads
    ckpt = copy_checkpoint(checkpoints[0], tmp_path / "t")
    marker = tmp_path / "marker"
    craft_metadata(ckpt, marker)
    with pytest.raises(UnsafeCheckpointError, match="system"):
        FileSystemReader(str(ckpt)).read_metadata()
    craft_common(ckpt, marker)
    with pytest.raises(UnsafeCheckpointError, match="common.pt: refers to .*system"):
        dist_checkpointing.load_common_state_dict(str(ckpt))
    evil = io.BytesIO()
    torch.save([_RunsShell(f"touch {marker}")], evil)  # a ShardedObject's bytes in a .distcp
    evil.seek(0)
    with pytest.raises(UnsafeCheckpointError, match="sharded object .*system"):
        DefaultLoadPlanner(flatten_state_dict=False).load_bytes(None, evil)
    assert not marker.exists()


# --- manifests and damaged checkpoints --------------------------------------------------


def flip_bytes(path: Path, count: int = 400) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for i in range(middle, min(middle + count, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def largest_shard(ckpt: Path) -> Path:
    return max(ckpt.glob("*.distcp"), key=lambda p: p.stat().st_size)


DAMAGE = {
    "truncated_distcp": (lambda c: truncate(largest_shard(c)), ".distcp"),
    "truncated_metadata": (lambda c: truncate(c / ".metadata"), ".metadata"),
    "damaged_common_pt": (lambda c: flip_bytes(c / "common.pt", 64), "common.pt"),
    "unreadable_model_config": (
        lambda c: (c / "model_config.json").write_text("{not json"),
        "model_config.json",
    ),
}


def test_manifest_lists_every_file_of_a_checkpoint(checkpoints):
    import json

    from megatron_salt.checkpoint_dir import file_digest

    ckpt = resolve_checkpoint(checkpoints[0])
    manifest = json.loads((ckpt / "manifest.json").read_text())
    files = sorted(p.name for p in ckpt.iterdir() if p.name != "manifest.json")
    assert sorted(manifest["files"]) == files and "common.pt" in files
    for name, entry in manifest["files"].items():
        assert entry == {"size": (ckpt / name).stat().st_size, "blake2b": file_digest(ckpt / name)}


@pytest.mark.parametrize("verify", [True, False], ids=["manifest", "no_manifest_check"])
def test_every_kind_of_damage_is_named(verify, checkpoints, tmp_path):
    """In-process, all cases: with the manifest check and with only the structural checks."""
    from megatron_salt.checkpoint_dir import CheckpointError, load_model_config, open_checkpoint

    for kind, (damage, name) in DAMAGE.items():
        ckpt = copy_checkpoint(checkpoints[0], tmp_path / kind)
        damage(ckpt)
        with pytest.raises(CheckpointError) as caught:
            load_model_config(open_checkpoint(ckpt.parent, verify=verify, log=print).path)
        message = str(caught.value)
        assert str(ckpt) in message and name in message and "\n" not in message, message


# (kind, flag, extra flags): every damage kind through a real command line, both flags,
# with and without the manifest check.
CLI_CASES = [
    ("truncated_distcp", "--kd-teacher-load", []),
    ("damaged_common_pt", "--load", []),
    ("truncated_metadata", "--load", ["--no-ckpt-verify"]),
    ("unreadable_model_config", "--kd-teacher-load", ["--no-ckpt-verify"]),
]


@pytest.mark.parametrize(("kind", "flag", "extra"), CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_damaged_checkpoint_is_one_line_naming_the_file(
    kind, flag, extra, tiny_data, checkpoints, tmp_path
):
    damage, name = DAMAGE[kind]
    if flag == "--kd-teacher-load":
        source = checkpoints[0]
        argv = salt_args(tiny_data, checkpoints, tmp_path / "run", "--train-iters", "2")
        argv += ["--kd-iters", "1"]
    else:
        source = checkpoints[1]
        argv = student_args(tiny_data, checkpoints, tmp_path / "run", "--train-iters", "2")
    ckpt = copy_checkpoint(source, tmp_path / "ckpt")
    damage(ckpt)
    argv[argv.index(flag) + 1] = str(tmp_path / "ckpt")
    rc, out, err = run_cli("pretrain_salt.py", [*argv, *extra])
    assert_one_line_error(rc, err, f"pretrain_salt.py: error: {flag}", str(ckpt), name)
    if extra:
        assert "manifest verification skipped (--no-ckpt-verify)" in out


def test_damaged_latest_checkpoint_names_the_newest_complete_one(tiny_data, checkpoints, tmp_path):
    from salt_runs import pretrain_on, records

    run = tmp_path / "run"
    argv = student_args(tiny_data, checkpoints, run, "--train-iters", "4", "--save-interval", "2")
    pretrain_on(1, argv)
    resume = [a for a in argv if a != "--finetune"]
    resume[resume.index("--load") + 1] = str(run)
    shard = largest_shard(run / "iter_0000004")
    flip_bytes(shard)  # 400 flipped bytes: same size, other content

    rc, _, err = run_cli("pretrain_salt.py", resume)
    assert_one_line_error(
        rc, err, "error: --load", f"{shard}: content differs from manifest.json",
        f"newest complete checkpoint: {run / 'iter_0000002'}",
    )  # fmt: skip

    rc, out, err = run_cli("pretrain_salt.py", [*resume, "--ckpt-load-fallback"])
    assert rc == 0, err
    assert f"falling back to the newest complete checkpoint {run / 'iter_0000002'}" in out
    assert [r["iteration"] for r in records(run)] == [1, 2, 3, 4]

    from megatron_salt.checkpoint_dir import open_checkpoint

    (run / "iter_0000004" / "manifest.json").unlink()  # as written before manifests existed
    notes: list[str] = []
    assert open_checkpoint(run, log=notes.append).path == run / "iter_0000004"
    assert notes == [
        f"note: {run / 'iter_0000004'} has no manifest.json (written before manifests): "
        "not verified"
    ]
