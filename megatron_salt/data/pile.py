"""Streaming readers for Pile-format shards: ``.jsonl``, ``.jsonl.zst`` and ``.jsonl.gz``.

A Pile shard is one JSON object per line, ``{"text": ..., "meta": {"pile_set_name": ...}}``,
and a single shard can be tens of GB, so nothing here holds more than a block of a file in
memory. Files are read as bytes and cut into :class:`LineBlock` s of whole lines; decoding and
JSON parsing happen later, per line (in the preprocessing workers), so every problem can be
reported as ``file:line``.

Two kinds of problems are reported as :class:`BadInputError` (file, line, reason, detail):

* a bad line (invalid UTF-8, invalid JSON, not an object, missing key, non-string text),
  found by :func:`parse_record` / :func:`document_texts`;
* a damaged compressed stream (truncated or corrupt ``.zst`` / ``.gz``), found by
  :func:`iter_line_blocks`, which yields a :class:`StreamProblem` in stream order (after the
  complete lines before it) rather than raising, so a caller that processes blocks in order
  reports the *first* problem of the input whatever ran ahead.

zstandard's streaming reader does not raise when a file ends inside a frame (it returns the
bytes it could decode and then EOF), so ``.zst`` is decoded with ``decompressobj`` and a frame
that never reaches its end is reported as truncated.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

SHARD_SUFFIXES = (".jsonl", ".jsonl.zst", ".jsonl.gz")
# Compressed bytes read per step: bounds the decompressed bytes one step can produce.
_READ_SIZE = 256 * 1024
DEFAULT_BLOCK_BYTES = 1 << 20

# Reasons a line or stream is rejected; also the keys of the summary's "skipped" counts.
INVALID_UTF8 = "invalid_utf8"
INVALID_JSON = "invalid_json"
NOT_AN_OBJECT = "not_an_object"
MISSING_KEY = "missing_key"
NON_STRING_TEXT = "non_string_text"
INVALID_UNICODE = "invalid_unicode"
TRUNCATED_STREAM = "truncated_stream"
CORRUPT_STREAM = "corrupt_stream"
BAD_INPUT_REASONS = (
    INVALID_UTF8,
    INVALID_JSON,
    NOT_AN_OBJECT,
    MISSING_KEY,
    NON_STRING_TEXT,
    INVALID_UNICODE,
    TRUNCATED_STREAM,
    CORRUPT_STREAM,
)

NO_SUBSET = "<none>"  # subset name of records without meta.pile_set_name


class InputError(ValueError):
    """The input cannot be opened at all (missing file, empty glob, duplicate): names the flag."""


class BadInputError(ValueError):
    """A bad line or a damaged stream, located as ``path:line``."""

    def __init__(self, path: str, line: int, reason: str, detail: str) -> None:
        super().__init__(f"{path}:{line}: {detail}")
        self.path = path
        self.line = line
        self.reason = reason
        self.detail = detail

    def __reduce__(self):  # keep the fields across process boundaries
        return (BadInputError, (self.path, self.line, self.reason, self.detail))


@dataclass
class LineBlock:
    """Whole lines of one file: ``data`` holds ``num_lines`` lines starting at ``first_line``.

    Every line ends with ``\\n`` except possibly the last line of the file.
    ``compressed_offset`` is how far into the (compressed) file reading had got when the block
    was cut, for progress and ETA.
    """

    path: str
    first_line: int
    num_lines: int
    data: bytes
    compressed_offset: int

    def lines(self) -> list[bytes]:
        lines = self.data.split(b"\n")
        if self.data.endswith(b"\n"):
            lines.pop()
        return lines


@dataclass
class StreamProblem:
    """The stream of ``path`` broke before or inside ``line``; yielded in place of a raise."""

    error: BadInputError
    compressed_offset: int


def expand_inputs(inputs: Sequence[str], flag: str = "--input") -> list[str]:
    """Files named by ``inputs``: files as given, directories and globs expanded and sorted.

    A directory contributes its ``*.jsonl``, ``*.jsonl.zst`` and ``*.jsonl.gz`` files (not
    recursively). Order is the order of ``inputs``, each expansion sorted by name.

    Raises:
        InputError: a path that does not exist, a directory or glob with no shards, or a file
            named twice.
    """
    files: list[str] = []
    for spec in inputs:
        if os.path.isdir(spec):
            found = sorted(
                os.path.join(spec, name)
                for name in os.listdir(spec)
                if name.endswith(SHARD_SUFFIXES) and os.path.isfile(os.path.join(spec, name))
            )
            if not found:
                raise InputError(
                    f"{flag}: directory {spec!r} has no {', '.join(SHARD_SUFFIXES)} files"
                )
        elif os.path.isfile(spec):
            found = [spec]
        elif glob.has_magic(spec):
            found = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
            if not found:
                raise InputError(f"{flag}: no files match {spec!r}")
        else:
            raise InputError(f"{flag}: no such file or directory: {spec!r}")
        files.extend(found)
    seen: dict[str, str] = {}
    for path in files:
        real = os.path.realpath(path)
        if real in seen:
            raise InputError(f"{flag}: {path!r} is given twice (also as {seen[real]!r})")
        seen[real] = path
    if not files:
        raise InputError(f"{flag}: no input files")
    return files


def _decompressed_chunks(path: str) -> Iterator[tuple[bytes, int]]:
    """Yield (decompressed bytes, compressed bytes consumed so far) for one file.

    Raises:
        _StreamBroken: truncated or corrupt compressed data.
    """
    with open(path, "rb") as raw:
        if path.endswith(".zst"):
            import zstandard

            decompressor = zstandard.ZstdDecompressor()
            frame = None  # decompressobj of the frame in progress
            while True:
                chunk = raw.read(_READ_SIZE)
                if not chunk:
                    break
                while chunk:
                    if frame is None:
                        frame = decompressor.decompressobj()
                    try:
                        out = frame.decompress(chunk)
                    except zstandard.ZstdError as err:
                        raise _StreamBroken(CORRUPT_STREAM, f"corrupt zstd data ({err})") from err
                    if out:
                        yield out, raw.tell()
                    # A frame ended inside this chunk: the rest starts the next frame.
                    chunk = frame.unused_data if frame.eof else b""
                    if frame.eof:
                        frame = None
            if frame is not None:
                raise _StreamBroken(
                    TRUNCATED_STREAM, "truncated zstd stream (file ends inside a frame)"
                )
        elif path.endswith(".gz"):
            with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                while True:
                    try:
                        out = stream.read(_READ_SIZE)
                    except EOFError as err:
                        raise _StreamBroken(
                            TRUNCATED_STREAM, f"truncated gzip stream ({err})"
                        ) from None
                    except (gzip.BadGzipFile, zlib.error) as err:
                        raise _StreamBroken(CORRUPT_STREAM, f"corrupt gzip data ({err})") from err
                    if not out:
                        break
                    yield out, raw.tell()
        else:
            while True:
                out = raw.read(DEFAULT_BLOCK_BYTES)
                if not out:
                    break
                yield out, raw.tell()


class _StreamBroken(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def iter_line_blocks(
    path: str, block_bytes: int = DEFAULT_BLOCK_BYTES
) -> Iterator[LineBlock | StreamProblem]:
    """Cut one file into blocks of whole lines of about ``block_bytes`` (a longer line is
    never split). A damaged stream ends the iteration with a :class:`StreamProblem` located
    at the line that could not be completed; the partial line is dropped.
    """
    pending = bytearray()
    next_line = 1
    offset = 0
    try:
        for data, offset in _decompressed_chunks(path):
            pending += data
            if len(pending) < block_bytes:
                continue
            cut = pending.rfind(b"\n") + 1
            if cut == 0:
                continue  # one long line so far: keep reading
            block = bytes(pending[:cut])
            del pending[:cut]
            num_lines = block.count(b"\n")
            yield LineBlock(path, next_line, num_lines, block, offset)
            next_line += num_lines
    except _StreamBroken as broken:
        cut = pending.rfind(b"\n") + 1
        if cut:
            block = bytes(pending[:cut])
            num_lines = block.count(b"\n")
            yield LineBlock(path, next_line, num_lines, block, offset)
            next_line += num_lines
        error = BadInputError(path, next_line, broken.reason, broken.detail)
        yield StreamProblem(error, os.path.getsize(path))
        return
    if pending:
        num_lines = pending.count(b"\n") + (0 if pending.endswith(b"\n") else 1)
        yield LineBlock(path, next_line, num_lines, bytes(pending), offset)


_JSON_TYPE_NAMES = {
    dict: "an object",
    list: "an array",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


def parse_record(raw: bytes, path: str, line: int) -> dict:
    """One JSON line as a dict; strict UTF-8.

    Raises:
        BadInputError: invalid UTF-8, invalid JSON, or not a JSON object.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BadInputError(
            path,
            line,
            INVALID_UTF8,
            f"invalid UTF-8 (byte 0x{raw[err.start]:02x} at column {err.start + 1})",
        ) from None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        raise BadInputError(path, line, INVALID_JSON, f"invalid JSON ({err})") from None
    if not isinstance(record, dict):
        kind = _JSON_TYPE_NAMES.get(type(record), type(record).__name__)
        raise BadInputError(path, line, NOT_AN_OBJECT, f"expected a JSON object, got {kind}")
    return record


def document_texts(record: dict, keys: Sequence[str], path: str, line: int) -> list[str]:
    """The string under each of ``keys``.

    Raises:
        BadInputError: a key is missing, its value is not a string, or the string holds a
            lone surrogate (a ``\\ud800``-style escape), which no tokenizer can take.
    """
    texts = []
    for key in keys:
        if key not in record:
            raise BadInputError(path, line, MISSING_KEY, f"missing key {key!r}")
        value = record[key]
        if not isinstance(value, str):
            kind = _JSON_TYPE_NAMES.get(type(value), type(value).__name__)
            raise BadInputError(path, line, NON_STRING_TEXT, f"{key!r} is {kind}, not a string")
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as err:
                raise BadInputError(
                    path,
                    line,
                    INVALID_UNICODE,
                    f"{key!r} holds a lone surrogate (U+{ord(value[err.start]):04X})",
                ) from None
        texts.append(value)
    return texts


def subset_name(record: dict) -> str:
    """``meta.pile_set_name``, or ``<none>`` when the record has none."""
    meta = record.get("meta")
    if isinstance(meta, dict):
        name = meta.get("pile_set_name")
        if isinstance(name, str):
            return name
    return NO_SUBSET


def iter_documents(
    paths: Sequence[str], key: str = "text", block_bytes: int = DEFAULT_BLOCK_BYTES
) -> Iterator[tuple[str, str]]:
    """(subset, text) of every record, in order; raises on the first bad line or stream.

    The simple sequential reader used for tokenizer training and tests; the preprocessing
    pipeline uses :func:`iter_line_blocks` directly to parse in parallel.
    """
    for path in paths:
        for block in iter_line_blocks(path, block_bytes):
            if isinstance(block, StreamProblem):
                raise block.error
            for i, raw in enumerate(block.lines()):
                if not raw.strip():
                    continue
                line = block.first_line + i
                record = parse_record(raw, path, line)
                (text,) = document_texts(record, [key], path, line)
                yield subset_name(record), text
