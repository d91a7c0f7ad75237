"""The largest token id of a Megatron ``.bin``, scanned once and cached.

Data tokenized with a larger vocabulary than the run's tokenizer otherwise fails deep
inside the embedding (an ``IndexError`` on CPU, a device assert on GPU) at the first
batch that holds such an id. The scan reads the ``.bin`` once (memory-mapped, in
blocks); the answer is cached in ``{prefix}.max_token_id.json`` (or under the dataset
cache directory when the data directory is not writable), keyed by the ``.bin``'s size
and modification time, so later start-ups only ``stat`` the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

import numpy as np

_BLOCK = 1 << 26  # tokens per scanned block


def _cache_paths(prefix: str, cache_dir: str | None) -> list[Path]:
    paths = [Path(prefix + ".max_token_id.json")]
    if cache_dir:
        key = hashlib.blake2b(os.path.abspath(prefix).encode(), digest_size=8).hexdigest()
        paths.insert(0, Path(cache_dir) / f"{Path(prefix).name}-{key}.max_token_id.json")
    return paths


def max_token_id(prefix: str, dtype: np.dtype, cache_dir: str | None = None) -> int:
    """Largest token id in ``{prefix}.bin`` (-1 if empty); cached (see the module doc)."""
    stat = os.stat(prefix + ".bin")
    key = {"bin_size": stat.st_size, "bin_mtime_ns": stat.st_mtime_ns}
    candidates = _cache_paths(prefix, cache_dir)
    for path in candidates:
        try:
            cached = json.loads(path.read_text())
            if {k: cached.get(k) for k in key} == key:
                return int(cached["max_token_id"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    tokens = np.memmap(prefix + ".bin", dtype=dtype, mode="r") if stat.st_size else []
    top = -1
    for start in range(0, len(tokens), _BLOCK):
        top = max(top, int(tokens[start : start + _BLOCK].max()))
    for path in candidates:
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({**key, "max_token_id": top}) + "\n")
            os.replace(tmp, path)
            break
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            continue  # read-only or full: try the next place, or scan again next time
    return top
