"""The offline demo corpus (Pile format from the Python stdlib) and the tokenizer trainer."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import sentencepiece
import zstandard

from megatron_salt.data.demo_corpus import (
    SUBSETS,
    build_demo_corpus,
    iter_pydoc_documents,
    stdlib_module_names,
)

pytest_plugins = ("salt_data_fixtures",)  # session fixtures: corpus, tokenizers

REPO = Path(__file__).resolve().parents[1]
FAST = dict(subsets=("PythonReference", "PythonLicense", "StdlibSource"), max_docs_per_subset=25)


def _records(shard: Path) -> list[dict]:
    with open(shard, "rb") as raw:
        text = io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(raw), encoding="utf-8")
        return [json.loads(line) for line in text]


def test_small_corpus_is_pile_format(small_corpus):
    manifest = json.loads((small_corpus / "corpus.json").read_text())
    shards = sorted(small_corpus.glob("*.jsonl.zst"))
    assert (
        [s.name for s in shards]
        == manifest["shards"]
        == ["00.jsonl.zst", "01.jsonl.zst", "02.jsonl.zst"]
    )
    counts: dict[str, list[int]] = {}
    for shard in shards:
        records = _records(shard)
        assert records, f"{shard.name} is empty"
        for record in records:
            subset = record["meta"]["pile_set_name"]
            assert subset in SUBSETS and isinstance(record["text"], str) and record["text"].strip()
            row = counts.setdefault(subset, [0, 0])
            row[0] += 1
            row[1] += len(record["text"].encode("utf-8"))
    assert manifest["subsets"] == {k: {"docs": d, "text_bytes": b} for k, (d, b) in counts.items()}
    assert set(counts) == set(SUBSETS)


def test_generation_is_deterministic_and_shuffled(tmp_path):
    first = build_demo_corpus(str(tmp_path / "a"), num_shards=2, **FAST)
    second = build_demo_corpus(str(tmp_path / "b"), num_shards=2, **FAST)
    for a, b in zip(first.shards, second.shards, strict=True):
        assert Path(a).read_bytes() == Path(b).read_bytes()
    # Subsets are interleaved across shards like the Pile's, not one subset per shard.
    subsets = [r["meta"]["pile_set_name"] for s in first.shards for r in _records(Path(s))]
    changes = sum(1 for x, y in zip(subsets[:-1], subsets[1:], strict=True) if x != y)
    assert changes > 10


def test_pydoc_pages_do_not_describe_this_machine(monkeypatch):
    monkeypatch.setenv("SALT_TEST_SECRET", "do-not-leak-me")
    names = ["json", "os", "tempfile", "cgi"]  # cgi's defaults capture os.environ (3.11, 3.12)
    pages = {doc.source: doc.text for doc in iter_pydoc_documents(names, processes=2)}
    assert {"json", "os", "tempfile"} <= set(pages)
    assert "JSON (JavaScript Object Notation)" in pages["json"]
    home = str(Path.home())
    for text in pages.values():
        assert "do-not-leak-me" not in text and "SALT_TEST_SECRET" not in text
        assert " at 0x" not in text
        assert sys.prefix not in text and home not in text
        assert "\nFILE\n" not in text
    # The same modules render to the same text in a second run.
    again = {doc.source: doc.text for doc in iter_pydoc_documents(names, processes=1)}
    assert again == pages


def test_module_list_skips_side_effects_and_tests():
    names = stdlib_module_names()
    assert names == sorted(names)
    assert {"json", "json.decoder", "email.mime.text", "collections.abc"} <= set(names)
    for unwanted in ("antigravity", "this", "idlelib", "tkinter", "test"):
        assert unwanted not in names
    assert not any(n.split(".")[-1] in ("__main__", "__init__") for n in names)
    parts = [part for n in names for part in n.split(".")]
    assert not any(p in ("test", "tests") or p.startswith("test_") for p in parts)
    assert "unittest" in names  # a module about tests is still a real module


def test_refuses_foreign_shards_and_replaces_its_own(tmp_path):
    foreign = tmp_path / "pile"
    foreign.mkdir()
    (foreign / "00.jsonl.zst").write_bytes(b"someone else's data")
    with pytest.raises(FileExistsError, match="holds shards this tool did not write"):
        build_demo_corpus(str(foreign), **FAST)
    assert (foreign / "00.jsonl.zst").read_bytes() == b"someone else's data"

    ours = tmp_path / "ours"
    build_demo_corpus(str(ours), num_shards=3, **FAST)
    build_demo_corpus(str(ours), num_shards=2, **FAST)  # rerun with fewer shards
    assert sorted(p.name for p in ours.glob("*.jsonl.zst")) == ["00.jsonl.zst", "01.jsonl.zst"]


def test_clis_write_corpus_and_deterministic_tokenizer(tmp_path):
    corpus = tmp_path / "corpus"
    out = subprocess.run(
        [sys.executable, str(REPO / "tools" / "make_demo_corpus.py"), "--output-dir", str(corpus),
         "--subsets", "PythonReference", "PythonLicense", "--num-shards", "2"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert out.splitlines()[0].split()[:3] == ["PythonLicense", "1", "docs"]
    assert "PythonReference" in out and "-> 2 shards" in out

    models = []
    for name in ("m1", "m2"):
        prefix = tmp_path / name / "spm"
        subprocess.run(
            [sys.executable, str(REPO / "tools" / "train_tokenizer.py"), "--input", str(corpus),
             "--model-prefix", str(prefix), "--vocab-size", "400", "--max-sentences", "3000"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert not list(prefix.parent.glob("*.tmp*"))
        models.append(sentencepiece.SentencePieceProcessor(model_file=f"{prefix}.model"))
    a, b = models
    assert a.get_piece_size() == 400 and (a.unk_id(), a.bos_id(), a.eos_id(), a.pad_id()) == (
        0,
        1,
        2,
        3,
    )
    assert [(a.id_to_piece(i), a.get_score(i)) for i in range(400)] == [
        (b.id_to_piece(i), b.get_score(i)) for i in range(400)
    ]

    bad = subprocess.run(
        [sys.executable, str(REPO / "tools" / "train_tokenizer.py"),
         "--input", str(tmp_path / "nope"), "--model-prefix", str(tmp_path / "x")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode == 2
    assert bad.stderr.strip() == (
        f"train_tokenizer: error: --input: no such file or directory: '{tmp_path / 'nope'}'"
    )
