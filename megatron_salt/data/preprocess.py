"""Pile shards -> Megatron ``.bin/.idx``: the pipeline behind ``tools/preprocess_pile.py``.

Flow. The main process streams every input file as blocks of whole lines (about
``block_bytes`` of JSON each) and hands them to ``workers`` processes; each worker parses,
filters and tokenizes a whole block with the tokenizer's batch API and sends back a few flat
numpy arrays. The main process takes results strictly in submission order, with a bounded
number in flight, and appends them to one Megatron-Core ``IndexedDatasetBuilder`` per JSON
key. The output therefore depends only on the input, never on ``workers``, on block size or
on timing.

Failure. Everything is written under ``.tmp`` names and published only after the whole input
went through: the ``.bin`` is renamed first, the summary next and the ``.idx`` last (a stale
``.idx`` of an earlier run is deleted before the ``.bin`` is replaced), so an ``.idx`` on
disk always belongs to a complete ``.bin`` next to it. On an error, Ctrl-C or a full disk (whose
error names the file), the temporary files are removed, even when closing them hits
the full disk again; after a ``kill -9`` they stay, and the next run overwrites them. A rerun
gives byte-identical ``.bin/.idx``.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import shutil
import signal
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

import numpy as np

from megatron_salt.data.encode import (
    ON_BAD_LINE,
    BlockEncoder,
    EncodedBlock,
    EncodeSettings,
    KeyTokens,
    encode_in_worker,
    init_worker,
)
from megatron_salt.data.pile import (
    BAD_INPUT_REASONS,
    DEFAULT_BLOCK_BYTES,
    BadInputError,
    InputError,
    LineBlock,
    StreamProblem,
    expand_inputs,
    iter_line_blocks,
)
from megatron_salt.tokenizer import TokenizerError, build_tokenizer

PROG = "preprocess_pile"
MAX_SKIP_WARNINGS = 20  # bad lines named on stderr with --on-bad-line skip
LEVEL = "document"  # Megatron-LM's naming: {prefix}_{key}_document.{bin,idx}


class PreprocessError(RuntimeError):
    """A run-level failure other than bad input (e.g. a worker process died)."""


@dataclass
class PreprocessConfig:
    inputs: Sequence[str]
    output_prefix: str
    tokenizer_type: str
    tokenizer_model: str
    json_keys: Sequence[str] = ("text",)
    append_eod: bool = False
    workers: int = 1  # worker processes; 0 = tokenize in the main process
    pile_subsets: Sequence[str] | None = None
    on_bad_line: str = "error"
    log_interval: int = 10_000  # documents between progress lines; 0 = none
    block_bytes: int = DEFAULT_BLOCK_BYTES


def _indexed_dataset():
    """Megatron-Core's indexed_dataset module, imported without its TE/apex warnings."""
    from megatron_salt.compat import filter_upstream_noise

    filter_upstream_noise()
    from megatron.core.datasets import indexed_dataset

    return indexed_dataset


def output_prefix_for(output_prefix: str, key: str) -> str:
    """``{output_prefix}_{key}_document``: the Megatron-LM name, and ``GPTDataset``'s path."""
    return f"{output_prefix}_{key}_{LEVEL}"


@dataclass
class OutputFiles:
    """Final and temporary paths of one key's outputs."""

    prefix: str

    @property
    def bin(self) -> str:
        return self.prefix + ".bin"

    @property
    def idx(self) -> str:
        return self.prefix + ".idx"

    @property
    def summary(self) -> str:
        return self.prefix + ".summary.json"

    @property
    def subsets(self) -> str:
        """Per-document Pile subset ids (int16 ``.npy``; names in the summary)."""
        return self.prefix + ".subsets.npy"

    def tmp(self, path: str) -> str:
        return path + ".tmp"

    def finals(self) -> tuple[str, str, str, str]:
        return self.bin, self.summary, self.subsets, self.idx

    @property
    def subsets_raw(self) -> str:
        """The subset ids as they stream in, before the ``.npy`` header is put on."""
        return self.tmp(self.subsets) + ".raw"

    def temporaries(self) -> tuple[str, ...]:
        return (*(self.tmp(p) for p in self.finals()), self.subsets_raw)

    def remove_temporaries(self) -> None:
        """Remove every temporary; a failure on one (say, a full disk) never keeps the rest."""
        failed = None
        for path in self.temporaries():
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
            except OSError as err:
                failed = failed or err
        if failed is not None:
            raise failed

    def publish(self) -> None:
        """Rename the complete temporaries into place; ``.idx`` last, as the commit mark."""
        if os.path.exists(self.idx):
            os.remove(self.idx)  # never pair an old .idx with the new .bin
        for path in self.finals():
            _fsync(self.tmp(path))
        for path in self.finals():
            os.replace(self.tmp(path), path)
        _fsync_dir(os.path.dirname(os.path.abspath(self.idx)))


def _fsync(path: str) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # not every filesystem can fsync a directory
    finally:
        os.close(fd)


def add_documents(builder, ids: np.ndarray, lengths: np.ndarray) -> None:
    """``builder.add_document(doc, [len(doc)])`` for a run of documents stored back to back.

    The same bytes and index entries as the per-document calls (tested), written with one
    ``write`` and two list extensions instead of a numpy copy and a write per document: the
    main process stays cheap per document however short the documents are. Uses the
    builder's public ``data_file``, ``sequence_lengths`` and ``document_indices``, as
    Megatron-Core's own ``IndexedDatasetBuilder.add_index`` does.
    """
    builder.data_file.write(np.ascontiguousarray(ids, dtype=builder.dtype).tobytes(order="C"))
    first = len(builder.sequence_lengths)
    builder.sequence_lengths.extend(lengths.tolist())
    builder.document_indices.extend(range(first + 1, first + 1 + len(lengths)))


@dataclass
class KeyWriter:
    """One JSON key: the Megatron-Core builder on the temporary ``.bin`` and the counts."""

    files: OutputFiles
    dtype: type
    docs: int = 0
    tokens: int = 0
    empty_docs: int = 0
    subsets: dict[str, list[int]] = field(default_factory=dict)
    #: Pile subset names in id order, as recorded per document in ``files.subsets``
    subset_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        IndexedDatasetBuilder = _indexed_dataset().IndexedDatasetBuilder

        os.makedirs(os.path.dirname(os.path.abspath(self.files.bin)), exist_ok=True)
        self.builder = IndexedDatasetBuilder(self.files.tmp(self.files.bin), dtype=self.dtype)
        # Streamed as raw int16 and wrapped into a .npy at the end: one id per document
        # never sits in memory for the whole corpus.
        self._subset_ids = open(self.files.subsets_raw, "wb")

    def add(self, tokens: KeyTokens, subset_names: list[str]) -> None:
        with _naming(self.files.tmp(self.files.bin)):
            add_documents(self.builder, tokens.ids, tokens.lengths)
        if len(tokens.lengths):
            ids = np.array([self._subset_id(name) for name in subset_names], dtype="<i2")
            with _naming(self.files.subsets_raw):
                self._subset_ids.write(ids[tokens.subsets].tobytes())
        self.docs += len(tokens.lengths)
        self.tokens += int(tokens.lengths.sum(dtype=np.int64))
        self.empty_docs += tokens.empty_docs
        if len(tokens.lengths):
            doc_counts = np.bincount(tokens.subsets, minlength=len(subset_names))
            token_counts = np.bincount(
                tokens.subsets, weights=tokens.lengths, minlength=len(subset_names)
            )
            for name, n_docs, n_tokens in zip(subset_names, doc_counts, token_counts, strict=True):
                row = self.subsets.setdefault(name, [0, 0])
                row[0] += int(n_docs)
                row[1] += int(n_tokens)

    def _subset_id(self, name: str) -> int:
        if name not in self.subset_names:
            self.subset_names.append(name)
        return self.subset_names.index(name)

    def finalize(self) -> None:
        self.builder.finalize(self.files.tmp(self.files.idx))
        self._subset_ids.close()
        with (
            open(self.files.subsets_raw, "rb") as src,
            open(self.files.tmp(self.files.subsets), "wb") as dst,
        ):
            header = {"descr": "<i2", "fortran_order": False, "shape": (self.docs,)}
            np.lib.format.write_array_header_1_0(dst, header)
            shutil.copyfileobj(src, dst)
        os.remove(self.files.subsets_raw)

    def close(self) -> None:
        """Close both files, whatever happens (closing flushes, and a full disk refuses that;
        the descriptor is released all the same)."""
        for f in (self.builder.data_file, self._subset_ids):
            try:
                f.close()
            except OSError:
                pass


@contextlib.contextmanager
def _naming(path: str) -> Iterator[None]:
    """Give a write error the file it happened on (``write`` errors carry no file name)."""
    try:
        yield
    except OSError as err:
        if err.filename is None:
            err.filename = path
        raise


@dataclass
class RunStats:
    """Counts shared by all keys, and the clock."""

    files: list[str]
    total_input_bytes: int
    start: float = field(default_factory=time.perf_counter)
    lines: int = 0
    text_bytes: int = 0
    done_files_bytes: int = 0
    current_offset: int = 0
    current_path: str | None = None
    skipped: Counter = field(default_factory=Counter)
    filtered_docs: int = 0
    blank_lines: int = 0

    def consumed(self, path: str, offset: int) -> None:
        if path != self.current_path:
            if self.current_path is not None:
                self.done_files_bytes += os.path.getsize(self.current_path)
            self.current_path = path
        self.current_offset = offset

    @property
    def input_bytes_done(self) -> int:
        return self.done_files_bytes + self.current_offset

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def _format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
    """Progress lines every ``interval`` documents: docs/s, tokens/s, MB/s of JSON, ETA.

    The ETA extrapolates from compressed bytes consumed over the total size of the inputs.
    """

    def __init__(self, stats: RunStats, interval: int, log: Callable[[str], None]) -> None:
        self.stats = stats
        self.interval = interval
        self.log = log
        self.next_at = interval

    def update(self, docs: int, tokens: int) -> None:
        if self.interval <= 0 or docs < self.next_at:
            return
        self.next_at = (docs // self.interval + 1) * self.interval
        s = self.stats
        elapsed = max(s.elapsed, 1e-9)
        fraction = s.input_bytes_done / max(s.total_input_bytes, 1)
        eta = elapsed * (1 - fraction) / fraction if fraction > 0 else float("nan")
        self.log(
            f"{docs:,} docs ({docs / elapsed:,.0f}/s), {tokens:,} tokens "
            f"({tokens / elapsed:,.0f}/s), {s.text_bytes / elapsed / 1e6:.1f} MB/s, "
            f"{100 * fraction:.1f}% of input, ETA {_format_duration(eta) if eta == eta else '?'}"
        )


def _blocks(files: Sequence[str], block_bytes: int) -> Iterator[LineBlock | StreamProblem]:
    for path in files:
        yield from iter_line_blocks(path, block_bytes)


def _ordered_results(
    items: Iterator[LineBlock | StreamProblem],
    encode: Callable[[LineBlock], EncodedBlock],
    executor: ProcessPoolExecutor | None,
    max_in_flight: int,
) -> Iterator[EncodedBlock | StreamProblem]:
    """Results in input order; at most ``max_in_flight`` blocks read ahead of the writer."""
    if executor is None:
        for item in items:
            yield item if isinstance(item, StreamProblem) else encode(item)
        return
    pending: deque[Future | StreamProblem] = deque()

    def resolve(entry):
        return entry if isinstance(entry, StreamProblem) else entry.result()

    for item in items:
        if isinstance(item, StreamProblem):
            pending.append(item)
        else:
            pending.append(executor.submit(encode_in_worker, item))
        while len(pending) >= max_in_flight:
            yield resolve(pending.popleft())
    while pending:
        yield resolve(pending.popleft())


def _stderr(message: str) -> None:
    print(f"[{PROG}] {message}", file=sys.stderr, flush=True)


def preprocess(config: PreprocessConfig, log: Callable[[str], None] = _stderr) -> dict[str, dict]:
    """Run the pipeline; returns each key's summary (also written next to its outputs).

    Raises:
        InputError, TokenizerError: bad flags (nothing is written).
        BadInputError: the first bad line or stream, with ``on_bad_line="error"``.
        PreprocessError: a worker died, or nothing was left to write.
    """
    DType = _indexed_dataset().DType

    if config.on_bad_line not in ON_BAD_LINE:
        raise InputError(f"--on-bad-line: choose from {', '.join(ON_BAD_LINE)}")
    if config.workers < 0:
        raise InputError("--workers: must be >= 0")
    if not config.json_keys or len(set(config.json_keys)) != len(config.json_keys):
        raise InputError("--json-keys: give one or more distinct keys")
    files = expand_inputs(config.inputs)
    tokenizer = build_tokenizer(config.tokenizer_type, config.tokenizer_model)
    dtype = DType.optimal_dtype(tokenizer.vocab_size)
    settings = EncodeSettings(
        tokenizer_type=config.tokenizer_type,
        tokenizer_model=config.tokenizer_model,
        json_keys=tuple(config.json_keys),
        append_eod=config.append_eod,
        dtype=np.dtype(dtype).name,
        pile_subsets=frozenset(config.pile_subsets) if config.pile_subsets else None,
        on_bad_line=config.on_bad_line,
    )
    stats = RunStats(files=files, total_input_bytes=sum(os.path.getsize(p) for p in files))
    outputs = {
        key: OutputFiles(output_prefix_for(config.output_prefix, key)) for key in settings.json_keys
    }
    writers: dict[str, KeyWriter] = {}
    executor = None
    try:
        for key, files_of_key in outputs.items():
            files_of_key.remove_temporaries()
            writers[key] = KeyWriter(files_of_key, dtype)
        first_key = writers[settings.json_keys[0]]
        progress = Progress(stats, config.log_interval, log)
        skipped_logged = 0
        if config.workers > 0:
            executor = ProcessPoolExecutor(
                max_workers=config.workers, initializer=init_worker, initargs=(settings,)
            )
            encode = encode_in_worker
        else:
            encode = BlockEncoder(settings, tokenizer).encode
        items = _blocks(files, config.block_bytes)
        for result in _ordered_results(items, encode, executor, 4 * max(config.workers, 1)):
            if isinstance(result, StreamProblem):
                if config.on_bad_line == "error":
                    raise result.error
                stats.skipped[result.error.reason] += 1
                stats.consumed(result.error.path, result.compressed_offset)
                log(f"warning: skipped the rest of {result.error}")
                continue
            if result.error is not None:
                raise result.error
            for key, writer in writers.items():
                writer.add(result.keys[key], result.subset_names)
            stats.lines += result.num_lines
            stats.text_bytes += result.input_bytes
            stats.skipped.update(result.skipped)
            stats.filtered_docs += result.filtered_docs
            stats.blank_lines += result.blank_lines
            stats.consumed(result.path, result.compressed_offset)
            for example in result.skipped_examples:
                skipped_logged += 1
                if skipped_logged <= MAX_SKIP_WARNINGS:
                    log(f"warning: skipped {example}")
                elif skipped_logged == MAX_SKIP_WARNINGS + 1:
                    log("warning: more bad lines skipped; the summary counts them all")
            progress.update(first_key.docs, first_key.tokens)
        if executor is not None:
            executor.shutdown()
            executor = None
        if first_key.docs == 0:
            raise PreprocessError(
                "no documents to write (every line was empty, filtered out or skipped)"
            )
        summaries = {}
        for key, writer in writers.items():
            writer.finalize()
            summaries[key] = _summary(config, key, writer, stats, tokenizer.describe())
            with open(writer.files.tmp(writer.files.summary), "w", encoding="utf-8") as f:
                json.dump(summaries[key], f, indent=2)
                f.write("\n")
        for writer in writers.values():
            writer.files.publish()
    except BrokenProcessPool as err:
        _abort(writers, outputs, executor)
        raise PreprocessError(
            f"a worker process died ({err}); out of memory? try fewer --workers"
        ) from None
    except OSError as err:
        _abort(writers, outputs, executor)
        if err.errno == errno.ENOSPC:
            where = err.filename or os.path.dirname(os.path.abspath(config.output_prefix))
            raise PreprocessError(
                f"no space left on device writing {where} (temporary files removed)"
            ) from None
        raise
    except BaseException:
        _abort(writers, outputs, executor)
        raise
    _log_done(log, config, summaries[settings.json_keys[0]], stats, outputs)
    return summaries


def _abort(writers, outputs, executor) -> None:
    """Stop the workers and remove every temporary file, even on a full disk."""
    if executor is not None:
        executor.shutdown(wait=True, cancel_futures=True)
    for writer in writers.values():
        writer.close()
    for files in outputs.values():
        try:
            files.remove_temporaries()
        except OSError as err:
            _stderr(f"warning: could not remove a temporary file: {err}")


def _summary(config, key, writer: KeyWriter, stats: RunStats, tokenizer: dict) -> dict:
    elapsed = stats.elapsed
    requested = sorted(config.pile_subsets) if config.pile_subsets else None
    return {
        "output_prefix": writer.files.prefix,
        "json_key": key,
        "dtype": np.dtype(writer.dtype).name,
        "tokenizer": tokenizer,
        "append_eod": config.append_eod,
        "input_files": list(stats.files),
        "input_bytes": stats.total_input_bytes,
        "text_bytes": stats.text_bytes,
        "lines": stats.lines,
        "pile_subsets": requested,
        "missing_pile_subsets": (
            sorted(set(requested) - set(writer.subsets)) if requested is not None else []
        ),
        "subsets": {
            name: {"docs": docs, "tokens": tokens}
            for name, (docs, tokens) in sorted(writer.subsets.items())
        },
        # id order of {prefix}.subsets.npy (one id per document)
        "subset_names": list(writer.subset_names),
        "total": {"docs": writer.docs, "tokens": writer.tokens},
        "empty_docs": writer.empty_docs,
        "filtered_docs": stats.filtered_docs,
        "blank_lines": stats.blank_lines,
        "on_bad_line": config.on_bad_line,
        "skipped": {reason: stats.skipped.get(reason, 0) for reason in BAD_INPUT_REASONS},
        "workers": config.workers,
        "elapsed_s": round(elapsed, 3),
        "docs_per_s": round(writer.docs / elapsed, 1),
        "tokens_per_s": round(writer.tokens / elapsed, 1),
    }


def _log_done(log, config, summary: dict, stats: RunStats, outputs) -> None:
    skipped = sum(summary["skipped"].values())
    elapsed = max(stats.elapsed, 1e-9)
    log(
        f"done: {summary['total']['docs']:,} docs, {summary['total']['tokens']:,} tokens from "
        f"{len(stats.files)} file(s) in {elapsed:.1f} s ({summary['tokens_per_s']:,.0f} "
        f"tokens/s, {stats.text_bytes / elapsed / 1e6:.1f} MB/s); {summary['empty_docs']} "
        f"empty, {summary['filtered_docs']} filtered out, {skipped} bad lines skipped"
    )
    width = max((len(name) for name in summary["subsets"]), default=0)
    for name, row in summary["subsets"].items():
        log(f"  {name:<{width}}  {row['docs']:>10,} docs  {row['tokens']:>14,} tokens")
    for files in outputs.values():
        log(f"wrote {files.prefix}.{{bin,idx}} and {os.path.basename(files.summary)}")
    if summary["missing_pile_subsets"]:
        log(
            "warning: --pile-subsets: no documents of "
            + ", ".join(repr(s) for s in summary["missing_pile_subsets"])
        )


# --- command line -------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Tokenize Pile-format shards (.jsonl, .jsonl.zst, .jsonl.gz) into Megatron "
            "{output-prefix}_{key}_document.bin/.idx. Flags follow Megatron-LM's "
            "tools/preprocess_data.py."
        ),
    )
    data = parser.add_argument_group("input data")
    data.add_argument(
        "--input",
        nargs="+",
        required=True,
        help="shard files, directories of shards, or globs (quoted); read in the order given",
    )
    data.add_argument(
        "--json-keys",
        nargs="+",
        default=["text"],
        help="JSON keys to tokenize; one output per key (default: text)",
    )
    data.add_argument(
        "--pile-subsets",
        nargs="+",
        default=None,
        metavar="NAME",
        help="keep only documents whose meta.pile_set_name is one of these",
    )
    data.add_argument(
        "--on-bad-line",
        choices=ON_BAD_LINE,
        default="error",
        help="error: stop at the first bad line (default); skip: skip and count bad lines",
    )
    tok = parser.add_argument_group("tokenizer")
    tok.add_argument(
        "--tokenizer-type",
        required=True,
        help="SentencePieceTokenizer, GPTSentencePieceTokenizer or HuggingFaceTokenizer",
    )
    tok.add_argument(
        "--tokenizer-model",
        required=True,
        help="sentencepiece .model, or a tokenizer.json / directory holding one",
    )
    tok.add_argument(
        "--append-eod", action="store_true", help="append the EOD id after every document"
    )
    out = parser.add_argument_group("output data")
    out.add_argument(
        "--output-prefix",
        required=True,
        help="writes {prefix}_{key}_document.bin/.idx/.summary.json",
    )
    run = parser.add_argument_group("runtime")
    run.add_argument(
        "--workers",
        type=int,
        default=1,
        help="tokenizer processes (default 1; 0 = in the main process); output is identical "
        "for any value",
    )
    run.add_argument(
        "--log-interval",
        type=int,
        default=10_000,
        help="documents between progress lines (default 10000; 0 = quiet)",
    )
    run.add_argument(
        "--block-size-mb",
        type=float,
        default=DEFAULT_BLOCK_BYTES / 2**20,
        help="MiB of JSON per unit of work sent to a worker (default 1)",
    )
    score = parser.add_argument_group("SALT_DS scores (optional)")
    score.add_argument(
        "--score-with",
        metavar="SLM_CHECKPOINT",
        default=None,
        help="after writing, score every document with this SLM checkpoint (pretrain_salt.py's, "
        "import-hf's or Megatron-LM's) and "
        "write {prefix}.salt_scores.npy/.json (see tools/score_data.py)",
    )
    from megatron_salt.selection.cli import add_scoring_flags

    add_scoring_flags(score)
    run.add_argument(
        "--partitions",
        type=int,
        default=None,
        help="accepted for Megatron-LM compatibility and ignored: inputs are streamed",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``tools/preprocess_pile.py`` / ``salt-preprocess-pile``. Exit 0, 2 (bad input or
    flags: one ``preprocess_pile: error: ...`` line on stderr) or 130 (interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.partitions not in (None, 1):
        _stderr("note: --partitions is ignored (inputs are streamed; use --workers)")
    if args.block_size_mb <= 0:
        parser.error("--block-size-mb: must be > 0")
    config = PreprocessConfig(
        inputs=args.input,
        output_prefix=args.output_prefix,
        tokenizer_type=args.tokenizer_type,
        tokenizer_model=args.tokenizer_model,
        json_keys=args.json_keys,
        append_eod=args.append_eod,
        workers=args.workers,
        pile_subsets=args.pile_subsets,
        on_bad_line=args.on_bad_line,
        log_interval=args.log_interval,
        block_bytes=max(1, int(args.block_size_mb * 2**20)),
    )
    if args.score_with is not None:
        from megatron_salt.checkpoint_dir import CheckpointError, resolve_checkpoint

        try:  # before hours of tokenizing, not after
            resolve_checkpoint(args.score_with)
        except CheckpointError as err:
            print(f"{PROG}: error: --score-with: {err}", file=sys.stderr)
            return 2
    # SIGTERM (e.g. a job scheduler) cleans up like Ctrl-C does.
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        preprocess(config)
    except (InputError, TokenizerError, BadInputError, PreprocessError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; no output written", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    if args.score_with is not None:
        return _score_outputs(args)
    return 0


def _score_outputs(args: argparse.Namespace) -> int:
    """``--score-with``: the SLM scores the prefixes just written (one process, or torchrun's)."""
    from megatron_salt.selection.cli import init_distributed_from_env, score

    prefixes = [output_prefix_for(args.output_prefix, key) for key in args.json_keys]
    init_distributed_from_env()
    try:
        score(
            args.score_with,
            prefixes,
            top_k=args.score_top_k,
            statistic=args.score_statistic,
            micro_batch_size=args.score_micro_batch_size,
            seq_length=args.score_seq_length,
            unit=args.score_unit,
            min_window_fill=args.score_min_window_fill,
            log=lambda message: _stderr(f"score: {message}"),
        )
    except (ValueError, FileNotFoundError) as err:
        print(f"{PROG}: error: --score-with {args.score_with}: {err}", file=sys.stderr)
        return 2
    return 0


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
