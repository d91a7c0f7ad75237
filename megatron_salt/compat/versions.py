"""Which Megatron-Core releases megatron-salt is tested with, and the API names that moved.

The supported range is the one ``setup.py`` declares; inside it, only the releases
in :data:`TESTED_MEGATRON_CORE` run the whole test suite and ``make demo`` in CI
(``make test`` and ``make test-newest``). Anything else gets one start-up warning
naming those, so a user on an untried release knows before the first step.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import os
from pathlib import Path

from packaging.version import Version

logger = logging.getLogger(__name__)

#: Releases CI runs the suite on: the newest for Python 3.11, the newest overall (3.12).
TESTED_MEGATRON_CORE = ("0.16.1", "0.19.2")
#: Mirrors ``install_requires`` in setup.py.
SUPPORTED_MEGATRON_CORE = ">=0.16.1,<0.20"


@functools.cache
def megatron_core_version() -> Version:
    """The installed release (public part: 0.19.2 reports ``0.19.2+<git hash of the cwd>``)."""
    return Version(Version(importlib.metadata.version("megatron-core")).public)


@functools.cache
def warn_if_untested() -> bool:
    """Log one warning if the installed Megatron-Core is not a tested release; True if tested."""
    found = megatron_core_version()
    if str(found) in TESTED_MEGATRON_CORE:
        return True
    logger.warning(
        "megatron-salt is tested with megatron-core %s (supported %s); found %s, untested",
        " and ".join(TESTED_MEGATRON_CORE),
        SUPPORTED_MEGATRON_CORE,
        found,
    )
    return False


def checkpoint_write_results_queue():
    """dist_checkpointing's shared write-results queue (renamed in 0.17).

    0.16 has ``_get_write_results_queue()``; 0.17+ ``get_write_results_queue(mp_mode=...)``,
    whose default ("spawn") is what 0.16 always used.
    """
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    getter = getattr(filesystem_async, "get_write_results_queue", None)
    if getter is None:
        getter = filesystem_async._get_write_results_queue
    return getter()


@functools.cache
def gpt_sample_query_returns_lengths() -> bool:
    """Whether ``GPTDataset._query_document_sample_shuffle_indices`` also returns lengths.

    0.16 returns ``(text, document_ids)``; 0.19 adds each document's token count before
    padding (for packed-sequence attention), and ``__getitem__`` unpacks three values. A
    subclass that builds its own samples must return what the installed release expects;
    read from the method's declared return type, so releases between the tested ones are
    handled by what they declare.
    """
    import typing

    from megatron.core.datasets.gpt_dataset import GPTDataset

    method = GPTDataset._query_document_sample_shuffle_indices
    try:
        returned = typing.get_type_hints(method).get("return")
    except Exception:  # noqa: BLE001 - unresolvable hints: fall back to the raw annotation
        returned = getattr(method, "__annotations__", {}).get("return")
    return len(typing.get_args(returned)) == 3


def write_legacy_common_state(checkpoint_dir: str | Path) -> None:
    """After ``dist_checkpointing.save`` (rank 0): keep a 0.17+ checkpoint readable by 0.16.

    0.17 moved the common (non-tensor) state from ``common.pt`` into the torch_dist
    shards, and 0.16 reads only ``common.pt``. 0.17+ still prefers ``common.pt``
    when it exists, so writing it from the state just saved keeps one source of
    truth for both. A no-op where the save already wrote it (0.16).
    """
    import torch
    from megatron.core import dist_checkpointing

    path = Path(checkpoint_dir) / "common.pt"
    if path.exists():
        return
    common = dist_checkpointing.load_common_state_dict(str(checkpoint_dir))
    tmp = path.with_name(path.name + ".tmp")
    torch.save(common, tmp)
    os.replace(tmp, path)
