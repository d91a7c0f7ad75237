"""Session fixtures for the data tests: a small real corpus and tokenizers trained on it.

Loaded as a pytest plugin by the data test modules (``pytest_plugins = ("salt_data_fixtures",)``)
so the fixtures are defined once per session. Each builds into one session-wide directory and
reuses what is already there.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from megatron_salt.data.demo_corpus import build_demo_corpus
from megatron_salt.data.pile import expand_inputs, iter_documents
from megatron_salt.data.tokenizer_training import TokenizerTrainingConfig, train_sentencepiece

# A slice of the demo corpus: ~2 MB of stdlib source, reference prose, pydoc pages, license.
SMALL_CORPUS = dict(
    num_shards=3,
    max_docs_per_subset=60,
    pydoc_modules=["json", "textwrap", "shlex", "string", "fnmatch"],
    processes=1,
)


def _data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.getbasetemp() / "salt-data"
    root.mkdir(exist_ok=True)
    return root


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> Path:
    """Directory of three Pile-format .jsonl.zst shards."""
    corpus = _data_root(tmp_path_factory) / "corpus"
    if not (corpus / "corpus.json").exists():
        build_demo_corpus(str(corpus), **SMALL_CORPUS)
    return corpus


@pytest.fixture(scope="session")
def corpus_documents(small_corpus) -> list[tuple[str, str]]:
    """(subset, text) of every document of the small corpus, in file and line order."""
    return list(iter_documents(expand_inputs([str(small_corpus)])))


@pytest.fixture(scope="session")
def spm_model(small_corpus, tmp_path_factory) -> Path:
    """A 1000-piece unigram sentencepiece model trained on the small corpus."""
    prefix = _data_root(tmp_path_factory) / "tokenizer" / "spm"
    model = prefix.with_suffix(".model")
    if not model.exists():
        train_sentencepiece(
            TokenizerTrainingConfig(
                inputs=[str(small_corpus)],
                model_prefix=str(prefix),
                vocab_size=1000,
                max_sentences=10_000,
                num_threads=1,
            )
        )
    return model


@pytest.fixture(scope="session")
def hf_tokenizer_dir(corpus_documents, tmp_path_factory) -> Path:
    """A byte-level BPE ``tokenizer.json`` (tokenizers library) trained on the small corpus."""
    tokenizers = pytest.importorskip("tokenizers")
    out = _data_root(tmp_path_factory) / "hf"
    if not (out / "tokenizer.json").exists():
        out.mkdir(exist_ok=True)
        tok = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token=None))
        tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = tokenizers.decoders.ByteLevel()
        trainer = tokenizers.trainers.BpeTrainer(
            vocab_size=800,
            special_tokens=["<pad>", "<|endoftext|>"],
            initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator((text for _, text in corpus_documents), trainer=trainer)
        tok.save(str(out / "tokenizer.json"))
    return out
