"""Upstream warnings our users cannot act on, filtered once, each with its reason.

Megatron-Core, torch and their helpers print notices meant for their own
developers or for setups we do not use (a deprecation of a class we must still
build, advice for async saves we never make). Left in, they bury the lines that
matter. Everything filtered is in :data:`UPSTREAM_NOISE`, matched by message
(and category or logger), so any other warning still shows.
"""

from __future__ import annotations

import functools
import logging
import re
import warnings
from dataclasses import dataclass


@dataclass(frozen=True)
class Noise:
    """One upstream message to drop: a ``warnings`` category or a logger name, and why."""

    message: str  # regex, matched at the start of the message
    reason: str
    category: type[Warning] | None = None  # a warnings.warn(...) message
    logger: str | None = None  # a logging record from this logger


UPSTREAM_NOISE = (
    Noise(
        r"(Transformer Engine and Apex are|Apex is|Transformer Engine is) not installed",
        "describe_backends() logs the active layer/optimizer path once",
        category=UserWarning,
    ),
    Noise(
        r"When using async grad allreduce it is recommended to set the environment variable",
        "advice for a TP comm-overlap setting megatron-salt does not enable",
        category=UserWarning,
    ),
    Noise(
        r"absl\.logging is not installed",
        "Megatron-Core 0.19 falls back to stdlib logging, which is what we configure",
        category=UserWarning,
    ),
    Noise(
        r"MimoModelConfig is experimental",
        "Megatron-Core 0.19 warns when its MiMo module is imported; we never use MiMo",
        category=UserWarning,
    ),
    Noise(
        r"Could not determine rank from torch\.distributed",
        "single-process tools (preprocessing, selection) build datasets without a process group",
        category=UserWarning,
    ),
    Noise(
        r"torch\.distributed is disabled, unavailable or uninitialized",
        "dist_checkpointing reads a checkpoint's metadata in one process on purpose",
        category=UserWarning,
    ),
    Noise(
        r"The argument order of load has been changed",
        "torch DCP's note about Megatron-Core's own call into it",
        category=UserWarning,
    ),
    Noise(
        r"`load_state_dict` is deprecated and will be removed",
        "torch DCP's note about Megatron-Core 0.16's own call into it",
        category=FutureWarning,
    ),
    Noise(
        r"Please use DTensor instead and we are deprecating ShardedTensor",
        "dist_checkpointing's format is built on ShardedTensor; the move is upstream's",
        category=FutureWarning,
    ),
    Noise(
        r"GPTModel IS DEPRECATED",
        "GPTModel is the model Megatron-Core 0.16-0.19 train; HybridModel is a later migration",
        logger="megatron.core.models.gpt.gpt_model",
    ),
    Noise(
        r"MCore's async save is deprecated",
        "Megatron-Core 0.19 says it on every synchronous save too; we never save async",
        logger="megatron.core.dist_checkpointing.strategies.torch",
    ),
    Noise(
        r"load_common is deprecated",
        "Megatron-Core 0.19 reading the common.pt we keep for 0.16 readers (compat/versions.py)",
        logger="megatron.core.dist_checkpointing.strategies.common",
    ),
    Noise(
        r"No CUDA runtime is found",
        "a CUDA build of torch on a machine without a GPU; nothing here compiles extensions",
        logger="torch.utils.cpp_extension",
    ),
)


class _DropMatching(logging.Filter):
    def __init__(self, patterns: list[str]) -> None:
        super().__init__()
        self._pattern = re.compile("|".join(f"(?:{p})" for p in patterns))

    def filter(self, record: logging.LogRecord) -> bool:
        return not self._pattern.match(record.getMessage())


@functools.cache
def _logger_filters() -> None:
    by_logger: dict[str, list[str]] = {}
    for noise in UPSTREAM_NOISE:
        if noise.logger:
            by_logger.setdefault(noise.logger, []).append(noise.message)
    for name, patterns in by_logger.items():
        logging.getLogger(name).addFilter(_DropMatching(patterns))


def filter_upstream_noise() -> None:
    """Drop the messages in :data:`UPSTREAM_NOISE`; call before importing Megatron-Core.

    ``warnings`` filters are re-added on every call (a test harness may reset them);
    logger filters are attached once.
    """
    for noise in UPSTREAM_NOISE:
        if noise.category is not None:
            warnings.filterwarnings("ignore", message=noise.message, category=noise.category)
    _logger_filters()
