"""Bad data and full disks through the real command lines: one line, exit 2, nothing left."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from salt_runs import REPO, salt_args, student_args
from test_checkpoint_safety import assert_one_line_error, run_cli

from megatron_salt.selection.sidecar import (
    BinFingerprint,
    ScoreHeader,
    idx_fingerprint,
    write_scores,
)
from megatron_salt.testing import free_port


def write_prefix(prefix: Path, documents: list[list[int]]) -> str:
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    prefix.parent.mkdir(parents=True, exist_ok=True)
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=DType.optimal_dtype(1000))
    for ids in documents:
        builder.add_document(torch.tensor(ids), [len(ids)])
    builder.finalize(f"{prefix}.idx")
    return str(prefix)


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "16m"):
    """A real tmpfs at ``path`` (root only); skips the test where it cannot be mounted."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def test_data_tokenized_with_a_larger_vocab(tiny_data, checkpoints, tmp_path):
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 400, 300).tolist() for _ in range(40)]  # the tokenizer has 320
    prefix = write_prefix(tmp_path / "big_vocab_text_document", docs)
    top = max(max(d) for d in docs)
    argv = student_args(tiny_data, checkpoints, tmp_path / "run", "--train-iters", "2")
    argv[argv.index("--data-path") + 1] = prefix
    rc, _, err = run_cli("pretrain_salt.py", argv)
    assert_one_line_error(
        rc, err, "pretrain_salt.py: error: --data-path", f"{prefix}.bin holds token id {top}",
        f"has {tiny_data.vocab_size} tokens",
    )  # fmt: skip
    cached = json.loads(Path(prefix + ".max_token_id.json").read_text())
    assert cached["max_token_id"] == top  # the next start-up only stats the .bin


def _scored_copy(tiny_data, dest: Path, scores: np.ndarray) -> str:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    source = IndexedDataset(tiny_data.prefix)
    docs = [source[d].tolist() for d in range(len(scores))]
    prefix = write_prefix(dest / "sel_text_document", docs)
    fp = BinFingerprint.of(prefix)
    header = ScoreHeader(
        "ckpt", 1, "f", 10, "median", 48, idx_fingerprint(prefix), len(scores),
        int(np.isfinite(scores).sum()), bin_size=fp.size, bin_blake2b=fp.blake2b,
        bin_sampled=fp.sampled, bin_mtime_ns=fp.mtime_ns,
    )  # fmt: skip
    write_scores(prefix, scores, header)
    return prefix


def test_selection_keeping_zero_documents(tiny_data, checkpoints, tmp_path):
    scores = np.arange(7, dtype=np.float32)
    prefix = _scored_copy(tiny_data, tmp_path, scores)
    rc, _, err = run_cli(
        "tools/select_data.py", ["--data-path", prefix, "--kd-data-selection", "range:0:0.1"]
    )
    assert_one_line_error(
        rc, err, "select_data.py: error: --kd-data-selection range:0:0.1 keeps no document",
        prefix, "7 of 7 documents have a score",
    )  # fmt: skip
    argv = salt_args(tiny_data, checkpoints, tmp_path / "run", "--train-iters", "2")
    argv += ["--kd-iters", "1", "--kd-data-path", prefix, "--kd-data-selection", "range:0:0.1"]
    rc, _, err = run_cli("pretrain_salt.py", argv)
    assert_one_line_error(
        rc, err, "pretrain_salt.py: error: --kd-data-selection: range:0:0.1 keeps no document",
        prefix,
    )  # fmt: skip


def test_read_only_data_directory_names_data_cache_path(tiny_data, checkpoints, tmp_path):
    mount = tmp_path / "ro"
    with tmpfs(mount):
        for suffix in (".bin", ".idx"):
            shutil.copy(tiny_data.prefix + suffix, mount / f"tiny_text_document{suffix}")
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        prefix = str(mount / "tiny_text_document")
        argv = student_args(tiny_data, checkpoints, tmp_path / "run", "--train-iters", "2")
        argv[argv.index("--data-path") + 1] = prefix
        rc, _, err = run_cli("pretrain_salt.py", argv)
        line = assert_one_line_error(
            rc, err, "pretrain_salt.py: error: --data-cache-path", str(mount),
            "Read-only file system", "pass --data-cache-path DIR",
        )  # fmt: skip
        # Under torchrun only rank 0 writes the cache; rank 1 waits for it and sees its
        # peer vanish. The user's last line is rank 0's (torchrun's root cause), and no
        # rank prints a traceback.
        torchrun = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(free_port()),
            str(REPO / "pretrain_salt.py"),
            *argv,
        ]
        proc = subprocess.run(torchrun, capture_output=True, text=True, timeout=240,
                              env=dict(os.environ, OMP_NUM_THREADS="1"))  # fmt: skip
        assert proc.returncode != 0
        assert "[rank1]: Traceback" not in proc.stderr and "[rank0]: Traceback" not in proc.stderr
        assert proc.stderr.strip().splitlines()[-2].strip() == f"traceback : {line}"


def test_checkpoint_save_on_a_full_disk(tiny_data, checkpoints, tmp_path):
    """A real full disk (a tmpfs with room for one checkpoint): one line, nothing half-written."""
    from megatron_salt.checkpoint_dir import verify_manifest

    with tmpfs(tmp_path / "disk", size="2600k") as disk:
        run = disk / "run"
        argv = student_args(tiny_data, checkpoints, run, "--train-iters", "4")
        rc, _, err = run_cli("pretrain_salt.py", [*argv, "--save-interval", "2"])
        assert_one_line_error(
            rc, err, f"pretrain_salt.py: error: --save {run}: no space left on device writing "
            f"{run / 'iter_0000004.partial'} (the previous checkpoint {run / 'iter_0000002'} "
            "is intact)",
        )  # fmt: skip
        assert sorted(p.name for p in run.iterdir()) == [
            "iter_0000002", "latest_checkpointed_iteration.txt", "metrics.jsonl",
        ]  # fmt: skip
        assert (run / "latest_checkpointed_iteration.txt").read_text().strip() == "2"
        assert verify_manifest(run / "iter_0000002")


def test_preprocessing_on_a_full_disk_leaves_no_temporary(tiny_data, tmp_path):
    """ENOSPC mid-write, and again when the cleanup closes (flushes) the files."""
    from conftest import stdlib_texts

    shard = tmp_path / "shard.jsonl"
    shard.write_text("".join(json.dumps({"text": t}) + "\n" for t in stdlib_texts(1_500_000)))
    with tmpfs(tmp_path / "disk", size="256k") as disk:
        argv = [
            sys.executable, str(REPO / "tools/preprocess_pile.py"), "--input", str(shard),
            "--output-prefix", str(disk / "p"), "--tokenizer-type", "SentencePieceTokenizer",
            "--tokenizer-model", tiny_data.tokenizer_model, "--workers", "1",
            "--log-interval", "0",
        ]  # fmt: skip
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert proc.stderr.strip().splitlines()[-1] == (
            f"preprocess_pile: error: no space left on device writing "
            f"{disk / 'p_text_document.bin.tmp'} (temporary files removed)"
        )
        assert list(disk.iterdir()) == []
