"""SALT_DS: SLM document scores, their sidecar, selection rules and the KD-phase dataset."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from salt_runs import REPO, load_reference_slm, pretrain_on, records, salt_args

from megatron_salt.selection.rules import Selection
from megatron_salt.selection.sidecar import (
    ScoreHeader,
    StaleScoresError,
    idx_fingerprint,
    load_scores,
    write_scores,
)
from megatron_salt.testing import free_port, run_on_ranks

TOP_K = 10
SEQ = 48  # scoring windows shorter than the SLM's 64 exercise multi-window documents


def _copy_prefix(prefix: str, dest: Path, num_docs: int | None = None) -> str:
    """A copy of the dataset (optionally its first documents only) to score in isolation."""
    from megatron.core.datasets.indexed_dataset import DType, IndexedDataset, IndexedDatasetBuilder

    dest.mkdir(parents=True, exist_ok=True)
    out = str(dest / "docs_text_document")
    source = IndexedDataset(prefix)
    n = len(source.document_indices) - 1 if num_docs is None else num_docs
    builder = IndexedDatasetBuilder(out + ".bin", dtype=DType.optimal_dtype(320))
    for d in range(n):
        ids = source[d]
        builder.add_document(torch.from_numpy(ids.astype(np.int64)), [len(ids)])
    builder.finalize(out + ".idx")
    return out


def _score_on_ranks(checkpoint: str, prefix: str, tp: int = 1, chunk: int = 3):
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    from megatron_salt.selection.scoring import SLMScorer, score_prefix

    parallel_state.initialize_model_parallel(tp, 1)
    model_parallel_cuda_manual_seed(0)
    scorer = SLMScorer(checkpoint, top_k=TOP_K, seq_length=SEQ, micro_batch_size=3)
    return score_prefix(scorer, prefix, chunk_documents=chunk, log=lambda m: None)


def _reference_scores(checkpoint: str, prefix: str) -> list[float]:
    """Float64 recomputation from the SLM's logits, one window at a time, written separately."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    model, cfg = load_reference_slm(checkpoint)
    dataset = IndexedDataset(prefix)
    scores = []
    for doc in range(len(dataset.document_indices) - 1):
        ids = dataset[doc].astype(np.int64)
        counted = []
        for start in range(0, len(ids) - 1, SEQ):
            inputs = torch.from_numpy(ids[start : start + SEQ][: len(ids) - 1 - start])[None]
            labels = torch.from_numpy(ids[start + 1 : start + 1 + inputs.shape[1]])
            with torch.no_grad():
                logits = model(
                    inputs, torch.arange(inputs.shape[1])[None], None, labels=labels[None]
                )
            z = logits[:, 0, : cfg.vocab_size].double().numpy()  # drop padded columns
            top = z.max(axis=1, keepdims=True)
            log_probs = z - (top + np.log(np.exp(z - top).sum(axis=1, keepdims=True)))
            for pos, label in enumerate(labels.numpy()):
                rank = int((z[pos] > z[pos, label]).sum())
                if rank < TOP_K:
                    counted.append(-log_probs[pos, label])
        scores.append(float(np.median(counted)) if counted else float("nan"))
    return scores


@pytest.fixture(scope="module")
def scored(tiny_data, checkpoints, tmp_path_factory):
    """The first documents of the tiny corpus, scored by the trained teacher (the SLM)."""
    prefix = _copy_prefix(tiny_data.prefix, tmp_path_factory.mktemp("scored"), num_docs=7)
    (scores,) = run_on_ranks(_score_on_ranks, 1, str(checkpoints[0]), prefix)
    return prefix, scores


def test_scores_equal_a_float64_recomputation(scored, checkpoints):
    prefix, scores = scored
    (reference,) = run_on_ranks(_reference_scores, 1, str(checkpoints[0]), prefix)
    np.testing.assert_allclose(scores, reference, rtol=1e-5)
    assert np.isfinite(scores).all()
    published, header = load_scores(prefix)
    np.testing.assert_array_equal(published, scores)
    assert (header.top_k, header.statistic, header.seq_length) == (TOP_K, "median", SEQ)
    assert header.num_documents == header.num_scored == 7


def test_tensor_and_data_parallel_scores_equal_single_process(scored, checkpoints, tmp_path):
    prefix, scores = scored
    for tp in (2, 1):  # TP=2 (one DP replica), then DP=2
        copy = _copy_prefix(prefix, tmp_path / f"tp{tp}")
        results = run_on_ranks(_score_on_ranks, 2, str(checkpoints[0]), copy, tp)
        for got in results:
            np.testing.assert_allclose(got, scores, rtol=1e-5, err_msg=f"tp={tp}")


def test_killed_scoring_job_resumes(scored, checkpoints, tmp_path):
    """kill -9 tools/score_data.py after some chunks, rerun it: same sidecar as one clean run."""
    prefix, scores = scored
    copy = _copy_prefix(prefix, tmp_path / "killed")
    argv = [
        sys.executable, str(REPO / "tools/score_data.py"), "--load", str(checkpoints[0]),
        "--data-path", copy, "--score-seq-length", str(SEQ), "--score-micro-batch-size", "3",
        "--chunk-documents", "1", "--score-unit", "document",
    ]  # fmt: skip
    env = dict(os.environ, MASTER_PORT=str(free_port()), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    partial = Path(copy + ".salt_scores.partial")
    deadline = time.time() + 120
    while time.time() < deadline and len(list(partial.glob("chunk_*.npy"))) < 3:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # kill -9 the job and its helper processes
    proc.wait()
    done = sorted(partial.glob("chunk_*.npy"))
    assert 3 <= len(done) < 7, "the job was not killed mid-way"
    stamps = {p.name: p.stat().st_mtime_ns for p in done}
    assert not Path(copy + ".salt_scores.json").exists()

    rerun = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0, rerun.stderr
    resumed, _ = load_scores(copy)
    np.testing.assert_allclose(resumed, scores, rtol=1e-5)
    assert not partial.exists()
    # Chunks finished before the kill were reused, not recomputed.
    assert f"resuming {copy}: {len(stamps)} of 7 chunks already scored" in rerun.stdout
    assert f"scored 7/7 documents of {copy}" in rerun.stdout


def test_stale_sidecar_is_refused(scored, tiny_data, checkpoints, tmp_path):
    prefix, scores = scored
    copy = _copy_prefix(prefix, tmp_path / "stale")
    shutil.copy(prefix + ".salt_scores.npy", copy + ".salt_scores.npy")
    shutil.copy(prefix + ".salt_scores.json", copy + ".salt_scores.json")
    load_scores(copy)  # same documents, same .idx bytes: accepted
    _copy_prefix(prefix, tmp_path / "stale", num_docs=6)  # the corpus changed under the scores
    with pytest.raises(StaleScoresError, match="scores were computed for another"):
        load_scores(copy)
    # ... and pretrain_salt.py refuses it in one line before training.
    from megatron_salt.training.loop import main

    argv = salt_args(tiny_data, checkpoints, tmp_path / "run", "--train-iters", "2")
    argv += ["--kd-iters", "1", "--kd-data-path", copy, "--kd-data-selection", "top:0.5"]
    assert main(argv) == 2


def test_sidecar_alignment_and_atomic_header(tmp_path, scored):
    prefix, _ = scored
    copy = _copy_prefix(prefix, tmp_path / "aligned")
    header = ScoreHeader("ckpt", 1, "f", 10, "median", 48, idx_fingerprint(copy), 7, 6)
    scores = np.array([0.5, np.nan, 2.0, 1.0, 3.0, 0.1, 9.0], dtype=np.float32)
    write_scores(copy, scores, header)
    got, got_header = load_scores(copy)
    np.testing.assert_array_equal(got, scores)  # one float per .idx document, in order
    assert got_header == header
    with pytest.raises(ValueError, match="7 documents"):
        write_scores(copy, scores[:5], header)
    Path(copy + ".salt_scores.json").unlink()
    with pytest.raises(StaleScoresError, match="run tools/score_data.py"):
        load_scores(copy)


def test_select_data_reports_kept_documents_and_tokens_per_subset(tmp_path, scored):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from megatron_salt.selection.cli import describe_selection

    prefix, _ = scored
    copy = _copy_prefix(prefix, tmp_path / "subsets")
    scores = np.array([0.5, np.nan, 2.0, 1.0, 3.0, 0.1, 9.0], dtype=np.float32)
    write_scores(
        copy, scores, ScoreHeader("ckpt", 1, "f", 10, "median", 48, idx_fingerprint(copy), 7, 6)
    )
    subset_ids = np.array([0, 0, 1, 1, 1, 0, 1], dtype=np.int16)
    np.save(copy + ".subsets.npy", subset_ids)
    Path(copy + ".summary.json").write_text(json.dumps({"subset_names": ["Docs", "Source"]}))

    lines = describe_selection(copy, "top:0.5")  # keeps documents 2, 4, 6 (scores 2, 3, 9)
    dataset = IndexedDataset(copy, mmap=True)
    bounds = dataset.document_indices
    lengths = [int(dataset.sequence_lengths[bounds[d] : bounds[d + 1]].sum()) for d in range(7)]
    source_total = sum(lengths[d] for d in (2, 3, 4, 6))
    source_kept = lengths[2] + lengths[4] + lengths[6]
    rows = {
        line.split()[0]: line.split()[1:]
        for line in lines
        if line.startswith(("  Docs", "  Source"))
    }
    docs_total = sum(lengths[d] for d in (0, 1, 5))
    total = docs_total + source_total
    # units kept, tokens kept, share of the subset kept, corpus mix, mix of the kept data
    assert rows["Docs"] == [
        "0/3", f"0/{docs_total:,}", "0.0%", f"{docs_total / total:.1%}", "0.0%"
    ]  # fmt: skip
    assert rows["Source"] == [
        "3/4",
        f"{source_kept:,}/{source_total:,}",
        f"{source_kept / source_total:.1%}",
        f"{source_total / total:.1%}",
        "100.0%",
    ]

    # --kd-data-selection-by subset: top:0.5 within each subset. Docs scores
    # (0.5, nan, 0.1) keep document 0; Source scores (2, 1, 3, 9) keep 4 and 6.
    lines = describe_selection(copy, "top:0.5", by="subset")
    rows = {
        line.split()[0]: line.split()[1:]
        for line in lines
        if line.startswith(("  Docs", "  Source"))
    }
    kept = lengths[0] + lengths[4] + lengths[6]
    assert rows["Docs"][:2] == ["1/3", f"{lengths[0]:,}/{docs_total:,}"]
    assert rows["Source"][:2] == ["2/4", f"{lengths[4] + lengths[6]:,}/{source_total:,}"]
    assert rows["Docs"][4] == f"{lengths[0] / kept:.1%}"
    assert any("(by subset): keeps 3 of 7 documents" in line for line in lines)


def test_selection_rules_keep_exactly_what_they_name():
    scores = np.array([3.0, np.nan, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, np.nan, 6.0])
    # ascending by (score, id) over the 8 scored documents: 2,4,7,0,3,5,9,6
    order = [2, 4, 7, 0, 3, 5, 9, 6]
    assert Selection.parse("top:0.5").select(scores).tolist() == sorted(order[4:])
    assert Selection.parse("top:1").select(scores).tolist() == sorted(order)
    assert Selection.parse("range:0:0.25").select(scores).tolist() == sorted(order[:2])
    assert Selection.parse("range:0.25:0.75").select(scores).tolist() == sorted(order[2:6])
    for bad in ("top:0", "top:1.5", "range:0.5:0.5", "bottom:0.3", "range:0.2", "top:x"):
        with pytest.raises(ValueError, match="--kd-data-selection"):
            Selection.parse(bad)


def _kd_and_main_datasets(prefix: str, selection: str, split: str):
    from megatron_salt.config import KDConfig
    from megatron_salt.training.data import DatasetTokenizer, build_datasets, gpt_dataset_config
    from megatron_salt.training.kd_data import build_kd_dataset

    common = dict(
        seq_length=32, seed=5, tokenizer=DatasetTokenizer(1, 320),
        eod_mask_loss=False, cache_path=None,
    )  # fmt: skip
    kd = KDConfig(teacher_load="x", iters=1, data_path=[prefix], data_selection=selection)
    kd_data = build_kd_dataset(kd, num_samples=40, split=split, **common)
    main, _, _ = build_datasets(
        gpt_dataset_config(data_path=[prefix], split=split, **common), [40, 0, 0]
    )
    return kd_data, main


def test_kd_phase_dataset_reads_only_selected_documents(tmp_path, tiny_data):
    copy = _copy_prefix(tiny_data.prefix, tmp_path / "kd")
    num_docs = tiny_data.num_documents
    # Score = document id, so the selection is known in closed form.
    header = ScoreHeader(
        "ckpt", 1, "f", 10, "median", 48, idx_fingerprint(copy), num_docs, num_docs
    )
    write_scores(copy, np.arange(num_docs, dtype=np.float32), header)
    kd_data, main = _kd_and_main_datasets(copy, "top:0.5", split="80,20,0")
    train_docs = set(range(int(round(0.8 * num_docs))))  # Megatron's split: first 80% of docs
    selected = set(range(num_docs // 2, num_docs))  # top:0.5 keeps ceil(n/2) documents
    assert set(kd_data.document_index.tolist()) == train_docs & selected
    assert set(main.document_index.tolist()) == train_docs
    # every token the KD phase reads comes from a selected training document
    read = {int(t) for i in range(len(kd_data)) for t in kd_data[i]["tokens"]}
    allowed = {int(t) for d in train_docs & selected for t in kd_data.dataset[d]}
    assert read <= allowed
    assert "SelectedGPTDataset" in kd_data.__class__.__name__


def test_pretrain_uses_the_selection_for_the_kd_phase(tmp_path, tiny_data, checkpoints, capsys):
    copy = _copy_prefix(tiny_data.prefix, tmp_path / "e2e")
    n = tiny_data.num_documents
    header = ScoreHeader("ckpt", 1, "f", 10, "median", 48, idx_fingerprint(copy), n, n)
    write_scores(copy, np.arange(n, dtype=np.float32), header)
    argv = salt_args(tiny_data, checkpoints, tmp_path / "run", "--train-iters", "3")
    argv += ["--kd-iters", "2", "--kd-data-path", copy, "--kd-data-selection", "range:0.5:1"]
    pretrain_on(1, argv)
    (run,) = records(tmp_path / "run", "run")
    assert run["kd_data_selection"] == "range:0.5:1" and run["kd_data_path"] == [copy]
    assert [r["kd_weight"] for r in records(tmp_path / "run")] == [0.6, 0.6, 0.0]
    # GPTDataset caches its indices under {prefix}/cache/: the KD phase read this
    # prefix through the selection (the post-KD data is tiny_data.prefix).
    cached = {p.parent.name for p in Path(copy).glob("cache/*/*-train-document_index.npy")}
    assert cached == {"SelectedGPTDataset_indices"}


def test_preprocess_pile_score_with_writes_the_sidecar(tiny_data, checkpoints, tmp_path):
    """tools/preprocess_pile.py --score-with: build a prefix and score it in one command."""
    from conftest import stdlib_texts

    texts = stdlib_texts(max_bytes=40_000)
    shard = tmp_path / "shard.jsonl"
    shard.write_text(
        "".join(json.dumps({"text": t, "meta": {"pile_set_name": "Stdlib"}}) + "\n" for t in texts)
    )
    argv = [
        sys.executable, str(REPO / "tools/preprocess_pile.py"), "--input", str(shard),
        "--output-prefix", str(tmp_path / "scored"), "--tokenizer-type", "SentencePieceTokenizer",
        "--tokenizer-model", tiny_data.tokenizer_model, "--append-eod", "--workers", "0",
        "--score-with", str(checkpoints[0]), "--score-seq-length", str(SEQ),
        "--score-unit", "document",
    ]  # fmt: skip
    env = dict(os.environ, MASTER_PORT=str(free_port()), OMP_NUM_THREADS="1")
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    prefix = str(tmp_path / "scored_text_document")
    scores, header = load_scores(prefix)
    assert header.num_documents == len(texts) == len(scores)
    assert np.isfinite(scores).all() and header.top_k == TOP_K
    # Same numbers as scoring the prefix on its own.
    (again,) = run_on_ranks(
        _score_on_ranks, 1, str(checkpoints[0]), _copy_prefix(prefix, tmp_path / "c")
    )
    np.testing.assert_allclose(scores, again, rtol=1e-6)

    bad = subprocess.run([*argv[:-4], "--score-with", str(tmp_path / "nope")], env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("preprocess_pile: error: --score-with")


def _equal_length_pair(tokenizer_model: str) -> tuple[str, str]:
    """Two short texts with the same number of tokens and different tokens."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=tokenizer_model)
    by_length: dict[int, tuple[str, list[int]]] = {}
    for a in ("import", "return", "class", "def", "print", "while", "lambda", "yield"):
        for b in ("self", "value", "path", "name", "data", "None", "True", "items"):
            text = f"{a} {b} = {b}.{a}()\n" * 3
            ids = sp.encode(text)
            if len(ids) in by_length and by_length[len(ids)][1] != ids:
                return by_length[len(ids)][0], text
            by_length.setdefault(len(ids), (text, ids))
    raise AssertionError("no two texts of equal token length")


def test_scores_are_bound_to_the_bin_swapped_documents_refused(tiny_data, checkpoints, tmp_path):
    """Re-preprocessing with two equal-length documents swapped: same .idx, other .bin."""
    from megatron_salt.training.loop import main

    first, second = _equal_length_pair(tiny_data.tokenizer_model)
    docs = [t for t in stdlib_texts_small()]

    def preprocess(order: list[str]) -> str:
        shard = tmp_path / "shard.jsonl"
        shard.write_text("".join(json.dumps({"text": t}) + "\n" for t in order))
        argv = [
            sys.executable, str(REPO / "tools/preprocess_pile.py"), "--input", str(shard),
            "--output-prefix", str(tmp_path / "d"), "--tokenizer-type", "SentencePieceTokenizer",
            "--tokenizer-model", tiny_data.tokenizer_model, "--append-eod", "--workers", "0",
        ]  # fmt: skip
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return str(tmp_path / "d_text_document")

    prefix = preprocess([*docs, first, second])
    env = dict(os.environ, MASTER_PORT=str(free_port()), OMP_NUM_THREADS="1")
    score = [
        sys.executable, str(REPO / "tools/score_data.py"), "--load", str(checkpoints[0]),
        "--data-path", prefix, "--score-seq-length", str(SEQ), "--score-unit", "document",
    ]  # fmt: skip
    proc = subprocess.run(score, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    select = [sys.executable, str(REPO / "tools/select_data.py"), "--data-path", prefix]
    ok = subprocess.run([*select, "--kd-data-selection", "top:0.5"], capture_output=True,
                        text=True, timeout=120)  # fmt: skip
    assert ok.returncode == 0, ok.stderr

    idx_before = Path(prefix + ".idx").read_bytes()
    bin_before = Path(prefix + ".bin").read_bytes()
    preprocess([*docs, second, first])
    assert Path(prefix + ".idx").read_bytes() == idx_before  # the .idx cannot tell
    assert Path(prefix + ".bin").read_bytes() != bin_before
    for check in ("quick",):  # "full": test_quick_bin_check_trusts_an_unchanged_mtime...
        bad = subprocess.run([*select, "--kd-data-selection-check", check], capture_output=True,
                             text=True, timeout=120)  # fmt: skip
        assert bad.returncode == 2 and "Traceback" not in bad.stderr
        (line,) = bad.stderr.strip().splitlines()
        assert line.startswith("select_data.py: error: ") and f"{prefix}.bin" in line
        assert "scores were computed for another" in line and "re-run tools/score_data.py" in line
    argv = salt_args(tiny_data, checkpoints, tmp_path / "run", "--train-iters", "2")
    argv += ["--kd-iters", "1", "--kd-data-path", prefix, "--kd-data-selection", "top:0.5"]
    assert main(argv) == 2


def stdlib_texts_small() -> list[str]:
    from conftest import stdlib_texts

    return stdlib_texts(max_bytes=20_000)


def test_quick_bin_check_trusts_an_unchanged_mtime_and_full_check_does_not(tmp_path):
    """A change the sampled blocks miss, with the mtime put back: only ``full`` sees it."""
    from megatron_salt.selection.sidecar import BinFingerprint, check_bin

    prefix = str(tmp_path / "big")
    data = bytearray(np.random.default_rng(0).integers(0, 256, 8 << 20, dtype=np.uint8))
    Path(prefix + ".bin").write_bytes(bytes(data))
    fp = BinFingerprint.of(prefix)
    header = ScoreHeader("c", 1, "f", 10, "median", 48, "i", 1, 1, bin_size=fp.size,
                         bin_blake2b=fp.blake2b, bin_sampled=fp.sampled,
                         bin_mtime_ns=fp.mtime_ns)  # fmt: skip
    # Offsets 100 KiB and 200 KiB lie between the sampled blocks (every ~128 KiB, 64 KiB long).
    data[100 << 10 : (100 << 10) + 512], data[200 << 10 : (200 << 10) + 512] = (
        data[200 << 10 : (200 << 10) + 512],
        data[100 << 10 : (100 << 10) + 512],
    )
    Path(prefix + ".bin").write_bytes(bytes(data))
    with pytest.raises(StaleScoresError, match="equal length swapped"):
        check_bin(prefix, header, Path("h"), "quick")  # rewritten: mtime differs -> full hash
    os.utime(prefix + ".bin", ns=(fp.mtime_ns, fp.mtime_ns))
    check_bin(prefix, header, Path("h"), "quick")  # what "quick" trusts: size, samples, mtime
    with pytest.raises(StaleScoresError, match="equal length swapped"):
        check_bin(prefix, header, Path("h"), "full")
