"""Turn a block of Pile lines into token arrays: the work each preprocessing worker does.

Kept free of torch / Megatron-Core imports so that worker processes start quickly under any
multiprocessing start method. A worker receives a :class:`~megatron_salt.data.pile.LineBlock`
(one bytes object) and returns an :class:`EncodedBlock` of a few numpy arrays per JSON key:
one pickle of flat arrays per block, not one per document.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from megatron_salt.data.pile import (
    BadInputError,
    LineBlock,
    document_texts,
    parse_record,
    subset_name,
)
from megatron_salt.tokenizer import Tokenizer, build_tokenizer

ON_BAD_LINE = ("error", "skip")


@dataclass(frozen=True)
class EncodeSettings:
    """Everything a worker needs, sent once when the worker starts."""

    tokenizer_type: str
    tokenizer_model: str
    json_keys: tuple[str, ...]
    append_eod: bool
    dtype: str  # numpy dtype name of the output ids
    pile_subsets: frozenset[str] | None = None
    on_bad_line: str = "error"


@dataclass
class KeyTokens:
    """Documents of one JSON key in one block: ``ids`` is all documents concatenated (EOD
    included), ``lengths[i]`` the length of document i, ``subsets[i]`` an index into
    :attr:`EncodedBlock.subset_names`."""

    ids: np.ndarray
    lengths: np.ndarray
    subsets: np.ndarray
    empty_docs: int = 0


@dataclass
class EncodedBlock:
    path: str
    num_lines: int
    input_bytes: int
    compressed_offset: int
    keys: dict[str, KeyTokens] = field(default_factory=dict)
    subset_names: list[str] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    skipped_examples: list[str] = field(default_factory=list)  # first few, as file:line: why
    filtered_docs: int = 0
    blank_lines: int = 0
    error: BadInputError | None = None  # first bad line, when on_bad_line == "error"


class BlockEncoder:
    """Parses, filters and tokenizes blocks; one per worker process (or in-process)."""

    def __init__(self, settings: EncodeSettings, tokenizer: Tokenizer | None = None) -> None:
        self.settings = settings
        self.tokenizer = tokenizer or build_tokenizer(
            settings.tokenizer_type, settings.tokenizer_model
        )
        self.dtype = np.dtype(settings.dtype)

    def encode(self, block: LineBlock) -> EncodedBlock:
        settings = self.settings
        result = EncodedBlock(
            path=block.path,
            num_lines=block.num_lines,
            input_bytes=len(block.data),
            compressed_offset=block.compressed_offset,
        )
        subset_index: dict[str, int] = {}
        texts: list[list[str]] = [[] for _ in settings.json_keys]
        subsets: list[int] = []
        for i, raw in enumerate(block.lines()):
            if not raw.strip():
                result.blank_lines += 1
                continue
            line = block.first_line + i
            try:
                record = parse_record(raw, block.path, line)
                doc_texts = document_texts(record, settings.json_keys, block.path, line)
            except BadInputError as err:
                if settings.on_bad_line == "error":
                    result.error = err
                    return result  # nothing of this block will be written
                result.skipped[err.reason] += 1
                if len(result.skipped_examples) < 3:
                    result.skipped_examples.append(str(err))
                continue
            subset = subset_name(record)
            if settings.pile_subsets is not None and subset not in settings.pile_subsets:
                result.filtered_docs += 1
                continue
            if subset not in subset_index:
                subset_index[subset] = len(result.subset_names)
                result.subset_names.append(subset)
            subsets.append(subset_index[subset])
            for key_texts, text in zip(texts, doc_texts, strict=True):
                key_texts.append(text)
        doc_subsets = np.asarray(subsets, dtype=np.int32)
        for key, key_texts in zip(settings.json_keys, texts, strict=True):
            result.keys[key] = self._tokenize(key_texts, doc_subsets)
        return result

    def _tokenize(self, texts: list[str], doc_subsets: np.ndarray) -> KeyTokens:
        # Whitespace-only documents are empty: nothing to learn from, and with --append-eod
        # they would become a lone EOD.
        keep = np.fromiter((bool(t) and not t.isspace() for t in texts), bool, len(texts))
        kept = [t for t, k in zip(texts, keep, strict=True) if k]
        flat, lengths = self.tokenizer.encode_batch_flat(kept)
        nonzero = lengths > 0  # a tokenizer may still produce nothing (e.g. only controls)
        empty_docs = len(texts) - int(nonzero.sum())
        subsets = doc_subsets[keep][nonzero]
        lengths = lengths[nonzero]
        flat = flat.astype(self.dtype, copy=False)
        if self.settings.append_eod:
            eod_at = np.cumsum(lengths + 1) - 1
            ids = np.empty(len(flat) + len(lengths), self.dtype)
            is_eod = np.zeros(len(ids), bool)
            is_eod[eod_at] = True
            ids[is_eod] = self.tokenizer.eod
            ids[~is_eod] = flat
            lengths = lengths + 1
        else:
            ids = flat
        return KeyTokens(
            ids=ids,
            lengths=lengths.astype(np.int32),
            subsets=subsets.astype(np.int32),
            empty_docs=empty_docs,
        )


# --- worker process -----------------------------------------------------------------------

_ENCODER: BlockEncoder | None = None


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker when its parent dies (e.g. the tool was kill -9'ed),
    instead of leaving it blocked on a queue nobody will ever write to."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def init_worker(settings: EncodeSettings) -> None:
    global _ENCODER
    _die_with_parent()
    # Ctrl-C goes to the whole process group; the parent handles it and shuts the pool down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Parallelism comes from the worker processes: keep the Rust tokenizers single-threaded.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _ENCODER = BlockEncoder(settings)


def encode_in_worker(block: LineBlock) -> EncodedBlock:
    assert _ENCODER is not None, "init_worker was not run in this process"
    return _ENCODER.encode(block)
