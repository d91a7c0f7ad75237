"""Shared test setup: Megatron-Core CPU patches, quiet optional-backend warnings, tiny real data."""

from __future__ import annotations

import sysconfig
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

from megatron_salt.compat import apply_cpu_patches, filter_upstream_noise

filter_upstream_noise()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    apply_cpu_patches()


@dataclass(frozen=True)
class TinyData:
    """A real-text Megatron dataset: stdlib sources, a sentencepiece model trained on them."""

    tokenizer_model: str
    prefix: str  # {prefix}.bin / {prefix}.idx
    vocab_size: int
    num_documents: int


def stdlib_texts(max_bytes: int) -> list[str]:
    """Python standard-library modules as documents (real text on any machine)."""
    texts, total = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        texts.append(text)
        total += len(text.encode())
        if total >= max_bytes:
            break
    return texts


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> TinyData:
    import sentencepiece as spm
    import torch
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    out = tmp_path_factory.mktemp("tiny_data")
    texts = stdlib_texts(max_bytes=600_000)
    (out / "train.txt").write_text("\n".join(texts))
    spm.SentencePieceTrainer.train(
        input=str(out / "train.txt"),
        model_prefix=str(out / "spm"),
        vocab_size=320,
        model_type="bpe",
        unk_id=0,
        eos_id=1,
        bos_id=-1,
        pad_id=-1,
        input_sentence_size=20_000,
        shuffle_input_sentence=False,
        num_threads=1,
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_file=str(out / "spm.model"))
    prefix = str(out / "tiny_text_document")
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=DType.optimal_dtype(sp.get_piece_size()))
    for ids in sp.encode(texts):
        ids = ids + [sp.eos_id()]
        builder.add_document(torch.tensor(ids), [len(ids)])
    builder.finalize(prefix + ".idx")
    return TinyData(str(out / "spm.model"), prefix, sp.get_piece_size(), len(texts))


@pytest.fixture(scope="session")
def checkpoints(tiny_data, tmp_path_factory):
    """(teacher checkpoint, student initial weights) for the training tests (see salt_runs.py)."""
    from salt_runs import STUDENT, TEACHER, common_args, pretrain_on

    root = tmp_path_factory.mktemp("ckpts")
    teacher = root / "teacher"
    # A different vocab padding than the students' (64 vs 96) exercises the
    # teacher-to-student vocab alignment.
    pretrain_on(
        1,
        [*TEACHER, *common_args(tiny_data, teacher, "--train-iters", "12",
                                "--make-vocab-size-divisible-by", "64")],
    )  # fmt: skip
    student = root / "student_init"
    init = ["--train-iters", "1", "--lr", "1e-5", "--min-lr", "1e-6"]
    pretrain_on(
        1,
        [*STUDENT, *common_args(tiny_data, student, *init, "--make-vocab-size-divisible-by", "96")],
    )
    return teacher, student
