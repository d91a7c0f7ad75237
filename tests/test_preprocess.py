"""tools/preprocess_pile.py end to end: real shards, real sentencepiece, Megatron-Core readers."""

from __future__ import annotations

import gzip
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
import zstandard
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megatron_salt.data.pile import expand_inputs, iter_line_blocks
from megatron_salt.data.preprocess import PreprocessConfig, main, preprocess
from megatron_salt.tokenizer import build_tokenizer

pytest_plugins = ("salt_data_fixtures",)  # session fixtures: corpus, tokenizers

REPO = Path(__file__).resolve().parents[1]
SPM = "SentencePieceTokenizer"


def _config(inputs, prefix, model, **overrides) -> PreprocessConfig:
    values = dict(
        inputs=[str(p) for p in inputs],
        output_prefix=str(prefix),
        tokenizer_type=SPM,
        tokenizer_model=str(model),
        append_eod=True,
        workers=0,
        log_interval=0,
    )
    values.update(overrides)
    return PreprocessConfig(**values)


def _outputs(prefix, key="text") -> tuple[bytes, bytes]:
    base = f"{prefix}_{key}_document"
    return Path(base + ".bin").read_bytes(), Path(base + ".idx").read_bytes()


def read_summary(prefix, key: str = "text") -> dict:
    with open(f"{prefix}_{key}_document.summary.json", encoding="utf-8") as f:
        return json.load(f)


def _write_jsonl(path: Path, lines: list[bytes]) -> Path:
    data = b"".join(line + b"\n" for line in lines)
    if path.name.endswith(".zst"):
        data = zstandard.ZstdCompressor().compress(data)
    elif path.name.endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)
    return path


def _doc(text, subset="Test", **extra) -> bytes:
    return json.dumps({"text": text, "meta": {"pile_set_name": subset}, **extra}).encode()


def test_round_trip_through_indexed_dataset(small_corpus, corpus_documents, spm_model, tmp_path):
    """Every document comes back from Megatron-Core's IndexedDataset as the tokenizer's own
    ids plus EOD, in input order, and the summary counts match."""
    summaries = preprocess(_config([small_corpus], tmp_path / "out", spm_model, workers=2))
    tok = build_tokenizer(SPM, str(spm_model))
    dataset = IndexedDataset(str(tmp_path / "out_text_document"))
    assert len(expand_inputs([str(small_corpus)])) == 3  # multi-shard .zst input
    assert dataset.index.dtype == np.uint16  # vocab 1000: Megatron's smallest safe dtype
    assert len(dataset) == len(corpus_documents)
    expected_counts: dict[str, list[int]] = {}
    for i, (subset, text) in enumerate(corpus_documents):
        expected = tok.encode(text) + [tok.eod]
        assert dataset[i].tolist() == expected, f"document {i} differs"
        row = expected_counts.setdefault(subset, [0, 0])
        row[0] += 1
        row[1] += len(expected)
    summary = read_summary(tmp_path / "out")
    assert summary == summaries["text"]
    assert summary["subsets"] == {
        k: {"docs": d, "tokens": t} for k, (d, t) in expected_counts.items()
    }
    assert summary["total"] == {
        "docs": len(corpus_documents),
        "tokens": int(dataset.sequence_lengths.sum()),
    }
    assert set(summary["subsets"]) == {
        "StdlibDocs",
        "StdlibSource",
        "PythonReference",
        "PythonLicense",
    }
    assert summary["tokenizer"]["eod"] == 2 and summary["dtype"] == "uint16"
    assert sum(summary["skipped"].values()) == 0 and summary["empty_docs"] == 0
    # Each document's Pile subset, aligned with the .idx document order.
    subset_ids = np.load(tmp_path / "out_text_document.subsets.npy")
    names = summary["subset_names"]
    assert [names[i] for i in subset_ids] == [subset for subset, _ in corpus_documents]


def test_output_is_identical_for_any_workers_and_block_size(small_corpus, spm_model, tmp_path):
    preprocess(_config([small_corpus], tmp_path / "w0", spm_model, workers=0))
    reference = _outputs(tmp_path / "w0")
    for name, overrides in {
        "w1": dict(workers=1),
        "w2": dict(workers=2),
        # 4 KiB blocks: many blocks per shard, and documents longer than a block.
        "w2_small_blocks": dict(workers=2, block_bytes=4096),
    }.items():
        preprocess(_config([small_corpus], tmp_path / name, spm_model, **overrides))
        assert _outputs(tmp_path / name) == reference, name


def test_gpt_dataset_builds_on_the_output(small_corpus, corpus_documents, spm_model, tmp_path):
    from megatron.core.datasets.blended_megatron_dataset_builder import (
        BlendedMegatronDatasetBuilder,
    )
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    preprocess(_config([small_corpus], tmp_path / "gpt", spm_model))
    tok = build_tokenizer(SPM, str(spm_model))
    seq_len = 128
    config = GPTDatasetConfig(
        random_seed=1234,
        sequence_length=seq_len,
        blend=([str(tmp_path / "gpt_text_document")], None),
        split="100,0,0",
        path_to_cache=str(tmp_path / "cache"),
        tokenizer=tok,
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
    )
    train, _, _ = BlendedMegatronDatasetBuilder(
        GPTDataset, [64, None, None], lambda: True, config
    ).build()
    assert len(train) >= 64
    # Megatron's own bookkeeping says which documents (in which order) a sample spans: the
    # sample must be exactly that slice of our documents.
    docs = [tok.encode(text) + [tok.eod] for _, text in corpus_documents]
    stream = np.concatenate([docs[d] for d in train.document_index])
    starts = np.concatenate(([0], np.cumsum([len(docs[d]) for d in train.document_index])))
    for j in range(8):
        sample = train[j]
        k = train.shuffle_index[j]
        doc, offset = train.sample_index[k]
        begin = starts[doc] + offset
        expected = stream[begin : begin + seq_len + 1]
        got = np.concatenate([sample["tokens"].numpy(), sample["labels"].numpy()[-1:]])
        assert got.tolist() == expected.tolist()


BAD_LINES = {
    "invalid_json": (
        b'{"text": "a" "b"}',
        r"invalid JSON \(Expecting ',' delimiter: line 1 column 14",
    ),
    "invalid_utf8": (b'{"text": "caf\xe9"}', r"invalid UTF-8 \(byte 0xe9 at column 14\)"),
    "missing_key": (b'{"txt": "hello"}', r"missing key 'text'"),
    "non_string_text": (b'{"text": 42}', r"'text' is a number, not a string"),
    "not_an_object": (b'["text"]', r"expected a JSON object, got an array"),
    "invalid_unicode": (b'{"text": "a\\ud800b"}', r"'text' holds a lone surrogate \(U\+D800\)"),
}


def _run_cli(capsys, argv) -> tuple[int, list[str]]:
    capsys.readouterr()  # drop what earlier in-process runs logged
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err


def _cli_args(inputs, prefix, model, *extra):
    return ["--input", *inputs, "--output-prefix", prefix, "--tokenizer-type", SPM,
            "--tokenizer-model", model, "--append-eod", "--log-interval", "0", *extra]  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_LINES))
@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.zst"])
def test_bad_line_is_one_error_and_no_output(case, suffix, spm_model, tmp_path, capsys):
    bad_line, message = BAD_LINES[case]
    good = [_doc(f"document number {i} " * 20) for i in range(40)]
    shard = _write_jsonl(tmp_path / f"shard{suffix}", good[:30] + [bad_line] + good[30:])
    out = tmp_path / "out"
    out.mkdir()
    # Tiny blocks: the bad line arrives after earlier blocks were already written.
    rc, err = _run_cli(
        capsys,
        _cli_args([shard], out / "p", spm_model, "--workers", "1", "--block-size-mb", "0.001"),
    )
    assert rc == 2
    assert len(err) == 1, err
    assert err[0].startswith(f"preprocess_pile: error: {shard}:31: ")
    assert pytest.importorskip("re").search(message, err[0]), err[0]
    assert list(out.iterdir()) == []  # nothing new, not even temporaries


def _truncated_zst(path: Path, lines: list[bytes]) -> int:
    """Write a .zst cut in the middle of its frame; returns the line the reader stops at."""
    data = zstandard.ZstdCompressor().compress(b"".join(line + b"\n" for line in lines))
    cut = data[: len(data) * 2 // 3]
    path.write_bytes(cut)
    readable = zstandard.ZstdDecompressor().decompressobj().decompress(cut)
    return readable.count(b"\n") + 1


def test_damaged_streams_are_errors(spm_model, tmp_path, capsys):
    lines = [
        _doc(f"line {i} with some text that does not compress too well {i * 7919}")
        for i in range(6000)
    ]
    out = tmp_path / "out"
    out.mkdir()
    truncated = tmp_path / "truncated.jsonl.zst"
    stop = _truncated_zst(truncated, lines)
    assert 1 < stop < len(lines)
    rc, err = _run_cli(capsys, _cli_args([truncated], out / "p", spm_model, "--workers", "2"))
    assert (rc, err) == (
        2,
        [
            f"preprocess_pile: error: {truncated}:{stop}: "
            "truncated zstd stream (file ends inside a frame)"
        ],
    )

    corrupt = tmp_path / "corrupt.jsonl.zst"
    corrupt.write_bytes(b"\x00" * 64)
    rc, err = _run_cli(capsys, _cli_args([corrupt], out / "p", spm_model))
    assert rc == 2 and err[0].startswith(f"preprocess_pile: error: {corrupt}:1: corrupt zstd data")

    gz = tmp_path / "truncated.jsonl.gz"
    gz.write_bytes(gzip.compress(b"".join(line + b"\n" for line in lines))[:-20])
    rc, err = _run_cli(capsys, _cli_args([gz], out / "p", spm_model))
    assert rc == 2 and len(err) == 1 and "truncated gzip stream" in err[0]
    assert err[0].startswith(f"preprocess_pile: error: {gz}:")
    assert list(out.iterdir()) == []


def test_flag_errors(spm_model, small_corpus, tmp_path, capsys):
    out = tmp_path / "p"
    cases = [
        (_cli_args([tmp_path / "nothere.jsonl"], out, spm_model),
         "preprocess_pile: error: --input: no such file or directory: "
         f"'{tmp_path / 'nothere.jsonl'}'"),
        (_cli_args([tmp_path / "*.jsonl.zst"], out, spm_model),
         f"preprocess_pile: error: --input: no files match '{tmp_path / '*.jsonl.zst'}'"),
        (_cli_args([small_corpus, small_corpus / "00.jsonl.zst"], out, spm_model),
         "preprocess_pile: error: --input: "),
        (_cli_args([small_corpus], out, tmp_path / "missing.model"),
         "preprocess_pile: error: --tokenizer-model: no such file or directory"),
        (_cli_args([small_corpus], out, spm_model)[:-2] + ["--tokenizer-type", "BertWordPieceCase"],
         "preprocess_pile: error: --tokenizer-type: unknown tokenizer type 'BertWordPieceCase'"),
    ]  # fmt: skip
    for argv, expected in cases:
        rc, err = _run_cli(capsys, argv)
        assert rc == 2 and len(err) == 1 and err[0].startswith(expected), (argv, err)
    assert list(tmp_path.iterdir()) == []


def test_skip_mode_counts_bad_lines_and_keeps_the_rest(spm_model, tmp_path, capsys):
    good = [f"good document {i}: " + "some words " * 30 for i in range(5)]
    lines = [
        _doc(good[0]),
        BAD_LINES["invalid_json"][0],
        _doc(good[1]),
        BAD_LINES["missing_key"][0],
        _doc(""),  # empty
        b"",  # blank line
        _doc(" \n\t "),  # whitespace only: empty too
        BAD_LINES["non_string_text"][0],
        BAD_LINES["invalid_utf8"][0],
        _doc(good[2]),
    ]
    first = _write_jsonl(tmp_path / "a.jsonl", lines)
    tail = [_doc(f"tail document {i} " + "x y z " * (i % 50)) for i in range(6000)]
    truncated = tmp_path / "b.jsonl.zst"
    stop = _truncated_zst(truncated, tail)
    out = tmp_path / "out" / "p"
    rc, err = _run_cli(
        capsys,
        _cli_args([first, truncated], out, spm_model, "--on-bad-line", "skip", "--workers", "2"),
    )
    assert rc == 0, err
    summary = read_summary(out)
    assert summary["skipped"] == {
        "invalid_utf8": 1, "invalid_json": 1, "not_an_object": 0, "missing_key": 1,
        "non_string_text": 1, "invalid_unicode": 0, "truncated_stream": 1, "corrupt_stream": 0,
    }  # fmt: skip
    assert summary["empty_docs"] == 2 and summary["blank_lines"] == 1
    kept = good[:3] + [json.loads(line)["text"] for line in tail[: stop - 1]]
    tok = build_tokenizer(SPM, str(spm_model))
    dataset = IndexedDataset(f"{out}_text_document")
    assert [dataset[i].tolist() for i in range(len(dataset))] == [
        tok.encode(t) + [tok.eod] for t in kept
    ]
    assert summary["total"]["docs"] == len(kept)
    assert any("truncated zstd stream" in line for line in err)
    # The skipped lines are named as they go by.
    assert f"[preprocess_pile] warning: skipped {first}:2: invalid JSON" in "\n".join(err)
    assert any(line.endswith(f"{first}:4: missing key 'text'") for line in err)


def test_pile_subsets_filter(small_corpus, corpus_documents, spm_model, tmp_path):
    wanted = ["StdlibDocs", "PythonLicense", "NoSuchSubset"]
    logs: list[str] = []
    preprocess(
        _config([small_corpus], tmp_path / "f", spm_model, pile_subsets=wanted), log=logs.append
    )
    tok = build_tokenizer(SPM, str(spm_model))
    kept = [text for subset, text in corpus_documents if subset in wanted]
    dataset = IndexedDataset(str(tmp_path / "f_text_document"))
    assert [dataset[i].tolist() for i in range(len(dataset))] == [
        tok.encode(t) + [tok.eod] for t in kept
    ]
    summary = read_summary(tmp_path / "f")
    assert set(summary["subsets"]) == {"StdlibDocs", "PythonLicense"}
    assert summary["filtered_docs"] == len(corpus_documents) - len(kept)
    assert summary["missing_pile_subsets"] == ["NoSuchSubset"]
    assert any("--pile-subsets: no documents of 'NoSuchSubset'" in line for line in logs)


def test_inputs_multiple_keys_formats_and_progress(spm_model, tmp_path):
    docs = [(f"Title {i}", f"Body of document {i}. " * (5 + i % 7)) for i in range(300)]
    lines = [json.dumps({"title": t, "text": b}).encode() for t, b in docs]
    data = tmp_path / "data"
    data.mkdir()
    _write_jsonl(data / "a.jsonl", lines[:100])
    _write_jsonl(data / "b.jsonl.gz", lines[100:200])
    _write_jsonl(data / "c.jsonl.zst", lines[200:])
    (data / "notes.txt").write_text("not a shard")  # ignored by directory expansion
    assert [Path(p).name for p in expand_inputs([str(data)])] == [
        "a.jsonl",
        "b.jsonl.gz",
        "c.jsonl.zst",
    ]
    assert expand_inputs([str(data / "*.jsonl*")]) == expand_inputs([str(data)])

    logs: list[str] = []
    config = _config(
        [data], tmp_path / "k", spm_model, json_keys=["text", "title"], workers=2, log_interval=50
    )
    preprocess(config, log=logs.append)
    tok = build_tokenizer(SPM, str(spm_model))
    for key, column in (("text", 1), ("title", 0)):
        dataset = IndexedDataset(str(tmp_path / f"k_{key}_document"))
        assert len(dataset) == len(docs)
        assert all(
            dataset[i].tolist() == tok.encode(d[column]) + [tok.eod] for i, d in enumerate(docs)
        )
        assert read_summary(tmp_path / "k", key)["subsets"] == {
            "<none>": {"docs": len(docs), "tokens": int(dataset.sequence_lengths.sum())}
        }
    progress = [line for line in logs if " docs (" in line]
    assert progress and all(
        "tokens (" in line and "MB/s" in line and "ETA" in line for line in progress
    )
    assert any(line.startswith("done: 300 docs") for line in logs)


def test_large_vocab_uses_int32_and_huggingface(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {"[UNK]": 0, "</s>": 1, **{f"w{i}": i + 2 for i in range(70_000)}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tok.save(str(tmp_path / "tokenizer.json"))
    texts = [" ".join(f"w{(i * 7919 + j * 104729) % 70_000}" for j in range(50)) for i in range(20)]
    shard = _write_jsonl(tmp_path / "s.jsonl", [_doc(t) for t in texts])
    preprocess(
        _config(
            [shard], tmp_path / "hf", tmp_path, tokenizer_type="HuggingFaceTokenizer", workers=1
        )
    )
    dataset = IndexedDataset(str(tmp_path / "hf_text_document"))
    assert dataset.index.dtype == np.int32
    for i, text in enumerate(texts):
        ids = [vocab[w] for w in text.split()] + [1]
        assert dataset[i].tolist() == ids


def test_huggingface_tokenizer_output_matches_library(hf_tokenizer_dir, corpus_documents, tmp_path):
    import tokenizers

    lib = tokenizers.Tokenizer.from_file(str(hf_tokenizer_dir / "tokenizer.json"))
    texts = [text for _, text in corpus_documents[:30]]
    shard = _write_jsonl(tmp_path / "s.jsonl.zst", [_doc(t) for t in texts])
    preprocess(
        _config(
            [shard],
            tmp_path / "hf",
            hf_tokenizer_dir,
            tokenizer_type="HuggingFaceTokenizer",
            workers=2,
        )
    )
    dataset = IndexedDataset(str(tmp_path / "hf_text_document"))
    eod = lib.token_to_id("<|endoftext|>")
    for i, text in enumerate(texts):
        assert dataset[i].tolist() == lib.encode(text, add_special_tokens=False).ids + [eod]


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_mid_run_then_rerun_is_identical(small_corpus, spm_model, tmp_path):
    # Six copies of the small corpus: long enough to kill the run while it writes.
    shards = []
    for copy in range(6):
        for shard in sorted(small_corpus.glob("*.jsonl.zst")):
            shards.append(tmp_path / f"in{copy}_{shard.name}")
            shutil.copy(shard, shards[-1])
    reference = tmp_path / "ref"
    preprocess(_config(shards, reference, spm_model, workers=2))

    prefix = tmp_path / "out" / "p"
    tmp_bin = Path(f"{prefix}_text_document.bin.tmp")
    args = _cli_args(shards, prefix, spm_model, "--workers", "2", "--block-size-mb", "0.25")
    cmd = [sys.executable, str(REPO / "tools" / "preprocess_pile.py"), *map(str, args)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_bin.exists() and tmp_bin.stat().st_size > 0):
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.005)
        workers = _children(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert workers, "expected worker processes"
    assert not Path(f"{prefix}_text_document.idx").exists()  # killed before publishing
    assert tmp_bin.exists()  # the half-written temporary is still there...
    deadline = time.monotonic() + 10
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(w) for w in workers), "workers outlived the killed parent"

    preprocess(_config(shards, prefix, spm_model, workers=1))  # ...and the rerun overwrites it
    assert _outputs(prefix) == _outputs(reference)
    assert not tmp_bin.exists()


class _SimulatedKill(BaseException):
    pass


def test_crash_between_renames_never_pairs_old_idx_with_new_bin(
    small_corpus, spm_model, tmp_path, monkeypatch
):
    shards = sorted(str(p) for p in small_corpus.glob("*.jsonl.zst"))
    prefix = tmp_path / "p"
    preprocess(_config(shards[:1], prefix, spm_model))  # an earlier, complete output
    preprocess(_config(shards, tmp_path / "ref", spm_model))  # what the new run should give

    real_replace = os.replace

    def replace_then_die(src, dst):
        if str(src).endswith(".summary.json.tmp"):  # the .bin was just renamed
            raise _SimulatedKill
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_then_die)
    with pytest.raises(_SimulatedKill):
        preprocess(_config(shards, prefix, spm_model))
    monkeypatch.setattr(os, "replace", real_replace)
    # New .bin in place, old .idx gone: Megatron sees no dataset rather than a mismatched one.
    assert Path(f"{prefix}_text_document.bin").read_bytes() == _outputs(tmp_path / "ref")[0]
    assert not Path(f"{prefix}_text_document.idx").exists()
    preprocess(_config(shards, prefix, spm_model))
    assert _outputs(prefix) == _outputs(tmp_path / "ref")


def test_failed_run_keeps_earlier_output(small_corpus, spm_model, tmp_path, capsys):
    prefix = tmp_path / "p"
    preprocess(_config([small_corpus], prefix, spm_model))
    before = _outputs(prefix)
    bad = _write_jsonl(tmp_path / "bad.jsonl", [_doc("fine"), b"{oops"])
    rc, err = _run_cli(capsys, _cli_args([bad], prefix, spm_model))
    assert rc == 2 and err == [
        f"preprocess_pile: error: {bad}:2: invalid JSON (Expecting property name enclosed "
        "in double quotes: line 1 column 2 (char 1))"
    ]
    assert _outputs(prefix) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "bad.jsonl", "p_text_document.bin", "p_text_document.idx", "p_text_document.subsets.npy",
        "p_text_document.summary.json",
    ]  # fmt: skip


def test_all_empty_is_an_error(spm_model, tmp_path, capsys):
    shard = _write_jsonl(tmp_path / "e.jsonl", [_doc(""), _doc("   ")])
    rc, err = _run_cli(capsys, _cli_args([shard], tmp_path / "out" / "p", spm_model))
    assert (rc, err) == (
        2,
        [
            "preprocess_pile: error: no documents to write "
            "(every line was empty, filtered out or skipped)"
        ],
    )
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_batched_add_documents_equals_megatron_add_document(tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    from megatron_salt.data.preprocess import add_documents

    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 50, size=300)
    ids = rng.integers(0, 4096, size=int(lengths.sum())).astype(np.uint16)
    one_by_one = IndexedDatasetBuilder(str(tmp_path / "a.bin"), dtype=np.uint16)
    batched = IndexedDatasetBuilder(str(tmp_path / "b.bin"), dtype=np.uint16)
    offsets = np.concatenate(([0], np.cumsum(lengths)))
    for i, n in enumerate(lengths.tolist()):
        one_by_one.add_document(ids[offsets[i] : offsets[i + 1]], [n])
    add_documents(batched, ids[: offsets[100]], lengths[:100])  # in two runs, as blocks come
    add_documents(batched, ids[offsets[100] :], lengths[100:])
    one_by_one.finalize(str(tmp_path / "a.idx"))
    batched.finalize(str(tmp_path / "b.idx"))
    for suffix in (".bin", ".idx"):
        assert (tmp_path / f"a{suffix}").read_bytes() == (tmp_path / f"b{suffix}").read_bytes()


def test_line_blocks_keep_line_numbers(tmp_path):
    lines = [b'{"text": "%d"}' % i for i in range(1000)] + [b'{"text": "last, no newline"}']
    path = tmp_path / "x.jsonl"
    path.write_bytes(b"\n".join(lines))
    seen = []
    for block in iter_line_blocks(str(path), block_bytes=100):
        assert block.num_lines == len(block.lines())
        seen.extend((block.first_line + i, raw) for i, raw in enumerate(block.lines()))
    assert seen == [(i + 1, raw) for i, raw in enumerate(lines)]
