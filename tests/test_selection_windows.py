"""SALT_DS by training window (``--score-unit window``) and within Pile subsets
(``--kd-data-selection-by subset``)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from salt_runs import REPO, load_reference_slm, records, salt_args
from test_selection import TOP_K, _copy_prefix

from megatron_salt.selection.rules import Selection
from megatron_salt.selection.sidecar import ScoreHeader, idx_fingerprint, load_scores, write_scores
from megatron_salt.selection.windows import (
    window_labels,
    window_offsets,
    window_pairs,
    windows_per_document,
)
from megatron_salt.testing import free_port, run_on_ranks

SEQ = 48
FILL = 0.5


def _score_windows_on_ranks(checkpoint: str, prefix: str, tp: int = 1):
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    from megatron_salt.selection.scoring import SLMScorer, score_prefix

    parallel_state.initialize_model_parallel(tp, 1)
    model_parallel_cuda_manual_seed(0)
    scorer = SLMScorer(checkpoint, top_k=TOP_K, seq_length=SEQ, micro_batch_size=3)
    return score_prefix(
        scorer, prefix, chunk_documents=2, unit="window", min_window_fill=FILL, log=lambda m: None
    )


def _reference_window_scores(checkpoint: str, prefix: str) -> list[float]:
    """Float64 from the SLM's logits: one window [w*S, w*S+S] at a time, its own median."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    model, cfg = load_reference_slm(checkpoint)
    dataset = IndexedDataset(prefix)
    scores = []
    for doc in range(len(dataset.document_indices) - 1):
        ids = dataset[doc].astype(np.int64)
        w = 0
        while w * SEQ < len(ids) - 1:
            window = ids[w * SEQ : w * SEQ + SEQ + 1]  # S+1 tokens, fewer at the end
            w += 1
            inputs, labels = torch.from_numpy(window[:-1])[None], window[1:]
            if len(labels) < math.ceil(FILL * SEQ):
                scores.append(float("nan"))
                continue
            with torch.no_grad():
                logits = model(  # [s, b, v], as in test_selection's reference
                    inputs, torch.arange(len(labels))[None], None,
                    labels=torch.from_numpy(labels)[None],
                )  # fmt: skip
            z = logits[:, 0, : cfg.vocab_size].double().numpy()
            log_z = z.max(axis=1) + np.log(np.exp(z - z.max(axis=1, keepdims=True)).sum(axis=1))
            label_z = z[np.arange(len(labels)), labels]
            counted = (log_z - label_z)[(z > label_z[:, None]).sum(axis=1) < TOP_K]
            scores.append(float(np.median(counted)) if len(counted) else float("nan"))
    return scores


@pytest.fixture(scope="module")
def window_scored(tiny_data, checkpoints, tmp_path_factory):
    prefix = _copy_prefix(tiny_data.prefix, tmp_path_factory.mktemp("wscored"), num_docs=5)
    (scores,) = run_on_ranks(_score_windows_on_ranks, 1, str(checkpoints[0]), prefix)
    return prefix, scores


def test_window_layout_in_closed_form():
    lengths = np.array([1, 2, 49, 50, 100, 0])  # S=48: 0, 1, 1, 2, 3, 0 windows
    counts = windows_per_document(lengths, SEQ)
    assert counts.tolist() == [0, 1, 1, 2, 3, 0]
    # labels: L-1 spread over windows of 48
    assert window_labels(lengths, SEQ).tolist() == [1, 48, 48, 1, 48, 48, 3]
    pairs = window_pairs(np.arange(7), window_offsets(counts))
    assert pairs.tolist() == [[1, 0], [2, 0], [3, 0], [3, 1], [4, 0], [4, 1], [4, 2]]


def test_window_scores_equal_a_float64_recomputation(window_scored, checkpoints):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from megatron_salt.checkpoint_dir import resolve_checkpoint
    from megatron_salt.config import ModelConfig

    prefix, scores = window_scored
    (reference,) = run_on_ranks(_reference_window_scores, 1, str(checkpoints[0]), prefix)
    np.testing.assert_allclose(scores, reference, rtol=1e-5)
    published, header = load_scores(prefix)
    np.testing.assert_array_equal(published, scores)
    data = IndexedDataset(prefix)  # keep it alive: sequence_lengths is its mmap
    lengths = data.sequence_lengths.astype(np.int64)
    assert header.unit == "window" and header.seq_length == SEQ
    assert header.num_windows == len(scores) == windows_per_document(lengths, SEQ).sum() > 5
    # the short last windows below the fill are NaN, the others are scored
    short = window_labels(lengths, SEQ) < math.ceil(FILL * SEQ)
    assert short.any() and np.isnan(scores[short]).all()
    assert np.isfinite(scores[~short]).mean() > 0.9  # NaN too: no label in the top-k
    assert header.num_scored == int(np.isfinite(scores).sum())
    # scoring cost: every label position is one SLM forward token
    cfg = ModelConfig.load(resolve_checkpoint(str(checkpoints[0])))
    assert header.scored_tokens == int((lengths - 1).sum())
    assert header.scoring_flops == pytest.approx(2 * cfg.num_parameters() * header.scored_tokens)
    assert header.scoring_seconds > 0 and header.scoring_world_size == 1


def test_tensor_and_data_parallel_window_scores_equal_single_process(
    window_scored, checkpoints, tmp_path
):
    prefix, scores = window_scored
    for tp in (2, 1):  # TP=2 (one replica), then DP=2 (chunks of 2 documents split)
        copy = _copy_prefix(prefix, tmp_path / f"tp{tp}")
        for got in run_on_ranks(_score_windows_on_ranks, 2, str(checkpoints[0]), copy, tp):
            np.testing.assert_allclose(got, scores, rtol=1e-5, err_msg=f"tp={tp}")


def test_bad_min_window_fill_is_one_line():
    out = subprocess.run(
        [sys.executable, str(REPO / "tools/score_data.py"), "--load", "x", "--data-path", "y",
         "--score-unit", "window", "--score-min-window-fill", "0"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "score_data.py: error: --score-min-window-fill 0.0: expected 0 < F <= 1"
    ]


def test_stratified_selection_keeps_each_groups_fraction():
    scores = np.array([5.0, 1.0, 2.0, 3.0, np.nan, 9.0, 8.0, 0.5])
    groups = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    rule = Selection.parse("top:0.5")
    # global: the 4 best of 7 scored (9, 8, 5, 3); by group: 2 of 4 and ceil(3/2)=2 of 3
    assert rule.select(scores).tolist() == [0, 3, 5, 6]
    assert rule.select(scores, groups).tolist() == [0, 3, 5, 6]
    assert Selection.parse("range:0:0.5").select(scores, groups).tolist() == [1, 2, 7]
    assert Selection.parse("top:0.25").select(scores, groups).tolist() == [0, 5]


def _window_sidecar(prefix: str, seq: int, scores_of=lambda flat: flat) -> np.ndarray:
    """Window scores known in closed form (default: score = flat window id)."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    data = IndexedDataset(prefix)  # keep it alive: sequence_lengths is its mmap
    lengths = data.sequence_lengths.astype(np.int64)
    n = int(windows_per_document(lengths, seq).sum())
    scores = scores_of(np.arange(n)).astype(np.float32)
    header = ScoreHeader(
        "ckpt", 1, "f", 10, "median", seq, idx_fingerprint(prefix), len(lengths),
        int(np.isfinite(scores).sum()), unit="window", num_windows=n, min_window_fill=0.5,
    )  # fmt: skip
    write_scores(prefix, scores, header)
    return lengths


def _write_subsets(prefix: str, num_docs: int) -> np.ndarray:
    ids = (np.arange(num_docs) % 3 == 0).astype(np.int16)  # every third document: subset 1
    np.save(prefix + ".subsets.npy", ids)
    Path(prefix + ".summary.json").write_text(json.dumps({"subset_names": ["Docs", "Source"]}))
    return ids


@pytest.mark.parametrize("by", ["global", "subset"])
def test_kd_dataset_samples_are_exactly_the_selected_windows(tmp_path, tiny_data, by):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from megatron_salt.config import KDConfig
    from megatron_salt.training.data import DatasetTokenizer
    from megatron_salt.training.kd_data import build_kd_dataset

    seq = 32
    copy = _copy_prefix(tiny_data.prefix, tmp_path / "kdw")
    lengths = _window_sidecar(copy, seq)
    subsets = _write_subsets(copy, len(lengths))
    counts = windows_per_document(lengths, seq)
    docs_of = np.repeat(np.arange(len(lengths)), counts)
    train_docs = np.arange(int(round(0.8 * len(lengths))))  # --split 80,20,0
    # Expected: top:0.3 of the flat ids (score = id), globally or within each subset.
    groups = subsets[docs_of] if by == "subset" else None
    keep = Selection.parse("top:0.3").select(np.arange(len(docs_of), dtype=float), groups)
    pairs = window_pairs(keep, window_offsets(counts))
    pairs = pairs[np.isin(pairs[:, 0], train_docs)]
    data = IndexedDataset(copy)
    expected = []
    for d, w in pairs:
        ids = data[int(d)].astype(np.int64)[w * seq : w * seq + seq + 1]
        expected.append(tuple(ids.tolist()))

    kd = KDConfig(
        teacher_load="x", iters=1, data_path=[copy], data_selection="top:0.3",
        data_selection_by=by,
    )  # fmt: skip
    dataset = build_kd_dataset(
        kd, num_samples=len(pairs) + 3, split="80,20,0", seq_length=seq, seed=3,
        tokenizer=DatasetTokenizer(1, 320), eod_mask_loss=False, cache_path=None,
    )  # fmt: skip
    assert type(dataset).__name__ == "SelectedWindowDataset"
    assert len(dataset) == 2 * len(pairs)  # two shuffled epochs cover len(pairs) + 3 samples
    got = []
    for i in range(len(pairs)):  # the first epoch: every selected window once
        sample = dataset[i]
        n = int(sample["loss_mask"].sum())  # a short last window is padded, padding masked
        assert sample["loss_mask"][n:].sum() == 0
        text = torch.cat([sample["tokens"][:1], sample["labels"][:n]])
        assert torch.equal(sample["tokens"][1:n], sample["labels"][: n - 1])
        got.append(tuple(text.tolist()))
    assert sorted(got) == sorted(expected)
    if by == "subset":  # both subsets keep ~30% of their windows
        for group in (0, 1):
            in_group = subsets[docs_of] == group
            assert math.ceil(0.3 * in_group.sum()) == int(
                np.isin(keep, np.flatnonzero(in_group)).sum()
            )


def _mix(lines: list[str]) -> dict[str, tuple[float, float]]:
    """Pile subset -> (corpus mix, kept mix) from select_data.py's table, in percent."""
    rows = [line.split() for line in lines if line.startswith(("  Docs", "  Source"))]
    return {row[0]: (float(row[4].rstrip("%")), float(row[5].rstrip("%"))) for row in rows}


def test_stratified_windows_keep_the_corpus_mix_by_tokens(tmp_path, tiny_data):
    """Scores that separate the subsets: a global top:0.5 keeps one subset only, by subset
    keeps half of each, so the kept token mix is the corpus's (up to short last windows)."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from megatron_salt.selection.cli import describe_selection

    seq = 32
    copy = _copy_prefix(tiny_data.prefix, tmp_path / "mix")
    data = IndexedDataset(copy)
    lengths = data.sequence_lengths.astype(np.int64)
    subsets = _write_subsets(copy, len(lengths))
    docs_of = np.repeat(np.arange(len(lengths)), windows_per_document(lengths, seq))
    # subset 0's windows all score above subset 1's; within a subset, by window id
    _window_sidecar(copy, seq, lambda flat: flat + 1e6 * (subsets[docs_of] == 0))
    rule = f"top:{0.5 * np.mean(subsets[docs_of] == 0):.3f}"  # within subset 0's share
    by_global = _mix(describe_selection(copy, rule))
    by_subset = _mix(describe_selection(copy, rule, by="subset"))
    corpus = by_global["Docs"][0]
    assert by_subset["Docs"][0] == corpus and 5 < corpus < 95
    assert by_global["Source"][1] == 0.0  # the global ranking drops a whole subset
    assert abs(by_subset["Docs"][1] - corpus) < 1.5  # percentage points
    assert abs(by_subset["Source"][1] - by_subset["Source"][0]) < 1.5


def test_document_scores_by_subset_in_the_kd_dataset(tmp_path, tiny_data):
    from megatron_salt.config import KDConfig
    from megatron_salt.training.data import DatasetTokenizer
    from megatron_salt.training.kd_data import build_kd_dataset

    copy = _copy_prefix(tiny_data.prefix, tmp_path / "docsub")
    n = tiny_data.num_documents
    header = ScoreHeader("ckpt", 1, "f", 10, "median", 48, idx_fingerprint(copy), n, n)
    write_scores(copy, np.arange(n, dtype=np.float32), header)  # score = document id
    subsets = _write_subsets(copy, n)
    kd = KDConfig(
        teacher_load="x", iters=1, data_path=[copy], data_selection="top:0.5",
        data_selection_by="subset",
    )  # fmt: skip
    dataset = build_kd_dataset(
        kd, num_samples=8, split="100,0,0", seq_length=32, seed=1,
        tokenizer=DatasetTokenizer(1, 320), eod_mask_loss=False, cache_path=None,
    )  # fmt: skip
    expected = set()
    for group in (0, 1):
        members = np.flatnonzero(subsets == group)
        expected |= set(members[len(members) - math.ceil(len(members) / 2) :].tolist())
    assert type(dataset).__name__ == "SelectedGPTDataset"
    assert set(dataset.document_index.tolist()) == expected


def test_selection_inside_the_train_split_only(tmp_path, tiny_data):
    """No selected window in the validation split: fine, the KD phase reads only train."""
    from megatron_salt.config import KDConfig
    from megatron_salt.training.data import DatasetTokenizer
    from megatron_salt.training.kd_data import build_kd_dataset

    copy = _copy_prefix(tiny_data.prefix, tmp_path / "trainonly")
    _window_sidecar(copy, 32)  # score = flat id: range:0:0.05 keeps the first documents'
    kd = KDConfig(teacher_load="x", iters=1, data_path=[copy], data_selection="range:0:0.05")
    dataset = build_kd_dataset(
        kd, num_samples=8, split="50,50,0", seq_length=32, seed=1,
        tokenizer=DatasetTokenizer(1, 320), eod_mask_loss=False, cache_path=None,
    )  # fmt: skip
    assert len(dataset) >= 8 and dataset.document_index.max() < tiny_data.num_documents // 2


def test_window_scores_need_the_training_seq_length(tmp_path, tiny_data):
    from megatron_salt.config import KDConfig
    from megatron_salt.training.data import DatasetTokenizer
    from megatron_salt.training.kd_data import EmptySelectionError, build_kd_dataset

    copy = _copy_prefix(tiny_data.prefix, tmp_path / "len")
    _window_sidecar(copy, 48)
    kd = KDConfig(teacher_load="x", iters=1, data_path=[copy], data_selection="top:0.5")
    with pytest.raises(
        EmptySelectionError, match="scored in windows of 48 tokens, but --seq-length is 32"
    ):
        build_kd_dataset(
            kd, num_samples=4, split="90,10,0", seq_length=32, seed=1,
            tokenizer=DatasetTokenizer(1, 320), eod_mask_loss=False, cache_path=None,
        )  # fmt: skip


def test_select_by_subset_without_subset_ids_is_one_line(tmp_path, tiny_data, checkpoints, capsys):
    from megatron_salt.selection.cli import select_main
    from megatron_salt.training.loop import main

    copy = _copy_prefix(tiny_data.prefix, tmp_path / "nosub")
    _window_sidecar(copy, 64)
    missing = (
        f"--kd-data-selection-by subset: {copy}.subsets.npy not found "
        "(per-document Pile subset ids, written by tools/preprocess_pile.py)"
    )
    argv = ["--data-path", copy, "--kd-data-selection", "top:0.5"]
    assert select_main([*argv, "--kd-data-selection-by", "subset"]) == 2
    assert capsys.readouterr().err.splitlines() == [f"select_data.py: error: {missing}"]

    argv = salt_args(tiny_data, checkpoints, tmp_path / "run", "--train-iters", "2")
    argv += ["--kd-iters", "1", "--kd-data-path", copy, "--kd-data-selection", "top:0.5"]
    assert main([*argv, "--kd-data-selection-by", "subset"]) == 2
    assert capsys.readouterr().err.splitlines() == [f"pretrain_salt.py: error: {missing}"]


def test_salt_ds_by_window_through_the_clis(tmp_path, tiny_data, checkpoints):
    """score_data.py --score-unit window, then pretrain_salt.py trains its KD phase on them."""
    copy = _copy_prefix(tiny_data.prefix, tmp_path / "cli", num_docs=12)
    _write_subsets(copy, 12)
    env = dict(os.environ, MASTER_PORT=str(free_port()), OMP_NUM_THREADS="1")
    score = subprocess.run(
        [sys.executable, str(REPO / "tools/score_data.py"), "--load", str(checkpoints[0]),
         "--data-path", copy, "--score-unit", "window", "--score-seq-length", "64",
         "--chunk-documents", "8"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert score.returncode == 0, score.stderr
    scores, header = load_scores(copy)
    assert header.unit == "window" and header.num_windows == len(scores) > 12
    from megatron_salt.selection.cli import describe_selection

    report = "\n".join(describe_selection(copy, "top:0.5", by="subset"))
    assert "one score per window of 64 tokens" in report
    assert "(by subset): keeps" in report and "windows kept" in report

    argv = salt_args(tiny_data, checkpoints, tmp_path / "run", "--train-iters", "3")
    argv += ["--kd-iters", "2", "--kd-data-path", copy, "--kd-data-selection", "top:0.5",
             "--kd-data-selection-by", "subset"]  # fmt: skip
    env["MASTER_PORT"] = str(free_port())
    run = subprocess.run(
        [sys.executable, str(REPO / "pretrain_salt.py"), *argv],
        env=dict(env, WORLD_SIZE="1", RANK="0"), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    kept = int(np.ceil(0.5 * np.isfinite(scores).sum()))  # roughly: ceil per subset
    assert f"--kd-data-selection top:0.5 (by subset): {copy} keeps" in run.stdout
    line = next(x for x in run.stdout.splitlines() if "(by subset): " + copy in x)
    assert abs(int(line.split(" keeps ")[1].split()[0]) - kept) <= 1
    assert f"of {len(scores)} windows" in line
    (record,) = records(tmp_path / "run", "run")
    assert record["kd_data_selection_by"] == "subset"
    assert [r["kd_weight"] for r in records(tmp_path / "run")] == [0.6, 0.6, 0.0]
