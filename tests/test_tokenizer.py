"""megatron_salt.tokenizer on real models trained from the stdlib corpus slice."""

import json
import sys

import numpy as np
import pytest
import sentencepiece

from megatron_salt.tokenizer import TokenizerError, build_tokenizer

pytest_plugins = ("salt_data_fixtures",)  # session fixtures: corpus, tokenizers


@pytest.mark.parametrize("tokenizer_type", ["SentencePieceTokenizer", "GPTSentencePieceTokenizer"])
def test_sentencepiece_matches_the_library(tokenizer_type, spm_model, corpus_documents):
    tok = build_tokenizer(tokenizer_type, str(spm_model))
    sp = sentencepiece.SentencePieceProcessor(model_file=str(spm_model))
    assert tok.vocab_size == sp.get_piece_size() == 1000
    # The trainer's fixed special ids; EOD is the model's EOS.
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (0, 1, 2, 3)
    assert tok.eod == tok.eos == 2 and tok.pad == 3

    texts = [text for _, text in corpus_documents[:40]] + ["", "   ", "héllo wörld ✓ 𝄞"]
    expected = [sp.encode_as_ids(t) for t in texts]
    assert tok.encode_batch(texts) == expected
    assert [tok.encode(t) for t in texts] == expected
    flat, lengths = tok.encode_batch_flat(texts)
    assert lengths.tolist() == [len(e) for e in expected]
    assert flat.tolist() == [i for e in expected for i in e]
    assert tok.encode_batch([]) == [] and tok.encode_batch_flat([])[0].size == 0
    # Identity normalization + byte fallback: every text (code indentation, newlines, emoji)
    # survives a round trip.
    for text, ids in zip(texts, expected, strict=True):
        assert tok.decode(ids) == text
        assert tok.decode(np.asarray(ids, dtype=np.uint16)) == text


def test_huggingface_tokenizer_file_or_directory(hf_tokenizer_dir, corpus_documents):
    import tokenizers

    lib = tokenizers.Tokenizer.from_file(str(hf_tokenizer_dir / "tokenizer.json"))
    texts = [text for _, text in corpus_documents[:6]] + ["", "naïve café"]
    for path in (hf_tokenizer_dir, hf_tokenizer_dir / "tokenizer.json"):
        tok = build_tokenizer("HuggingFaceTokenizer", str(path))
        assert tok.vocab_size == lib.get_vocab_size(with_added_tokens=True)
        assert tok.eod == lib.token_to_id("<|endoftext|>")
        assert tok.pad == lib.token_to_id("<pad>")
        expected = [lib.encode(t, add_special_tokens=False).ids for t in texts]
        assert tok.encode_batch(texts) == expected
        assert tok.encode(texts[0]) == expected[0]
        flat, lengths = tok.encode_batch_flat(texts)
        assert flat.tolist() == [i for e in expected for i in e]
        assert lengths.tolist() == [len(e) for e in expected]
        assert tok.decode(expected[0]) == texts[0]


def test_huggingface_eos_from_tokenizer_config(hf_tokenizer_dir, tmp_path):
    import tokenizers

    lib = tokenizers.Tokenizer.from_file(str(hf_tokenizer_dir / "tokenizer.json"))
    (tmp_path / "tokenizer.json").write_bytes((hf_tokenizer_dir / "tokenizer.json").read_bytes())
    # transformers' AddedToken form of eos_token; "<pad>" is a deliberately odd choice.
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": "<pad>"}}))
    assert build_tokenizer("HuggingFaceTokenizer", str(tmp_path)).eod == lib.token_to_id("<pad>")

    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<nope>"}))
    with pytest.raises(TokenizerError, match="eos_token '<nope>'.*not in the vocabulary"):
        build_tokenizer("HuggingFaceTokenizer", str(tmp_path))


def test_huggingface_without_any_eos_token(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({"a": 0, "b": 1}, unk_token="a"))
    tok.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(TokenizerError, match="none of the EOS tokens.*tokenizer_config.json"):
        build_tokenizer("HuggingFaceTokenizer", str(tmp_path / "tokenizer.json"))


def test_bad_tokenizer_flags_name_the_flag(spm_model, tmp_path, monkeypatch):
    with pytest.raises(TokenizerError, match=r"--tokenizer-type: unknown tokenizer type 'GPT2BPE"):
        build_tokenizer("GPT2BPETokenizer", str(spm_model))
    with pytest.raises(TokenizerError, match="--tokenizer-model: no such file"):
        build_tokenizer("SentencePieceTokenizer", str(tmp_path / "missing.model"))
    with pytest.raises(TokenizerError, match="--tokenizer-model: no tokenizer.json"):
        build_tokenizer("HuggingFaceTokenizer", str(tmp_path))
    with pytest.raises(TokenizerError, match="is a directory"):
        build_tokenizer("SentencePieceTokenizer", str(tmp_path))
    garbage = tmp_path / "garbage.model"
    garbage.write_bytes(b"this is not a sentencepiece model")
    with pytest.raises(TokenizerError, match="--tokenizer-model: cannot load sentencepiece"):
        build_tokenizer("SentencePieceTokenizer", str(garbage))
    garbage_json = tmp_path / "tokenizer.json"
    garbage_json.write_text("{not json")
    with pytest.raises(TokenizerError, match="--tokenizer-model: cannot load"):
        build_tokenizer("HuggingFaceTokenizer", str(garbage_json))
    # The optional dependency is imported lazily and its absence explained.
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(TokenizerError, match="needs the 'tokenizers' package"):
        build_tokenizer("HuggingFaceTokenizer", str(garbage_json))
