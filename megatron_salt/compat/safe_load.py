"""Checkpoint loading that cannot run code: restricted unpickling at dist_checkpointing's seams.

A teacher checkpoint is someone else's file, and pickle runs whatever a file tells it
to. Megatron-Core's ``dist_checkpointing`` (torch_dist format) unpickles three things
when it loads:

1. ``.metadata``: ``pickle.load`` in torch's ``FileSystemReader.read_metadata``;
2. ``ShardedObject`` bytes inside the ``.distcp`` shards (RNG states, ``_extra_state``):
   ``torch.load(..., weights_only=False)`` in torch's ``DefaultLoadPlanner.load_bytes``;
3. ``common.pt`` (and per-object ``.pt`` files): ``torch.load`` in Megatron-Core's
   ``TorchCommonLoadStrategy``.

:func:`apply_safe_checkpoint_loading` gives each of those modules a stand-in for
``pickle`` / ``torch`` whose ``load`` is restricted: ``.metadata`` goes through
:class:`RestrictedUnpickler` (the checkpoint-metadata dataclasses of
``torch.distributed.checkpoint`` and nothing else), ``torch.load`` always runs with
``weights_only=True`` (torch's own allow-list plus the classes Megatron-Core registers
in ``megatron.core.safe_globals``). Everything else in those modules is untouched. A
file that names anything else is refused with :class:`UnsafeCheckpointError`, before
any of it is called. Listed in ``patches/README.md``.
"""

from __future__ import annotations

import functools
import importlib
import os
import pickle
import re
import types
from typing import Any

import torch

#: Globals a dist_checkpointing ``.metadata`` may name (torch 2.6-2.13 write these).
METADATA_GLOBALS = frozenset(
    {
        ("torch", "Size"),
        ("torch.serialization", "_get_layout"),
        ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
        *(
            ("torch.distributed.checkpoint.metadata", name)
            for name in (
                "Metadata",
                "MetadataIndex",
                "StorageMeta",
                "TensorProperties",
                "TensorStorageMetadata",
                "BytesStorageMetadata",
                "ChunkStorageMetadata",
                "_MEM_FORMAT_ENCODING",
            )
        ),
        *(
            ("torch.distributed.checkpoint.planner", name)
            for name in ("SavePlan", "WriteItem", "WriteItemType", "TensorWriteData")
        ),
        ("collections", "OrderedDict"),
    }
)


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint file asks the unpickler for something outside the allow-list."""

    source: str | os.PathLike | None = None  # the file, where the loader knows it


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles dist_checkpointing metadata: allow-listed classes, torch dtypes/layouts."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in METADATA_GLOBALS:
            return super().find_class(module, name)
        if module == "torch":
            value = getattr(torch, name, None)
            if isinstance(value, (torch.dtype, torch.layout, torch.memory_format)):
                return value
        raise UnsafeCheckpointError(
            f"refers to {module}.{name}, which checkpoint metadata never contains "
            "(refused: loading it could run code)"
        )


def restricted_pickle_load(file: Any) -> Any:
    """``pickle.load`` for checkpoint metadata (see :class:`RestrictedUnpickler`)."""
    return RestrictedUnpickler(file).load()


# torch's wording for a refused global / opcode (2.6-2.13)
_UNSUPPORTED = re.compile(
    r"(?:unsupported|Unsupported global:) GLOBAL ([\w.]+)|Unsupported operand (\S+)"
)


def weights_only_load(*args: Any, **kwargs: Any) -> Any:
    """``torch.load`` forced to ``weights_only=True``; refusals become one line."""
    kwargs["weights_only"] = True
    try:
        return torch.load(*args, **kwargs)
    except pickle.UnpicklingError as err:
        found = _UNSUPPORTED.search(str(err))
        what = (found.group(1) or found.group(2)) if found else "something torch refuses"
        source = args[0] if args and isinstance(args[0], (str, os.PathLike)) else None
        refused = UnsafeCheckpointError(
            f"{source or 'a sharded object in the .distcp shards'}: refers to {what}, which is "
            "not a tensor or plain data (refused: loading it could run code)"
        )
        refused.source = source
        raise refused from None


class _Overriding(types.ModuleType):
    """A module (or module-like object) as one module sees it: some attributes replaced.

    ``_Overriding(pickle, load=restricted_pickle_load)`` is ``pickle`` with a restricted
    ``load``; everything not overridden is the original's.
    """

    def __init__(self, original: Any, **overrides: Any) -> None:
        super().__init__(getattr(original, "__name__", type(original).__name__))
        self._original = original
        self.__dict__.update(overrides)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)


#: (module, global it reads through, function that must use it) for each seam. The
#: common-state seam moved: 0.16 loads ``common.pt`` in ``TorchCommonLoadStrategy``
#: through ``torch``, 0.19 in a module-level ``load_common`` through ``maybe_msc.torch``
#: (its new-format common state is read with ``weights_only=True`` already).
_SEAMS = (
    ("torch.distributed.checkpoint.filesystem", "pickle", "FileSystemReader.read_metadata"),
    ("torch.distributed.checkpoint.default_planner", "torch", "DefaultLoadPlanner.load_bytes"),
)
_COMMON_SEAMS = (
    (
        "megatron.core.dist_checkpointing.strategies.common",
        "torch",
        "TorchCommonLoadStrategy.load_common",
    ),
    ("megatron.core.dist_checkpointing.strategies.common", "maybe_msc", "load_common"),
)


class SeamMovedError(RuntimeError):
    """torch or Megatron-Core no longer loads checkpoints where this patch expects."""


def _loads_through(module: types.ModuleType, global_name: str, function: str) -> bool:
    owner = module
    for part in function.split("."):
        owner = getattr(owner, part, None)
    code = getattr(owner, "__code__", None)
    return (
        getattr(module, global_name, None) is not None
        and code is not None
        and global_name in code.co_names
        and "load" in code.co_names
    )


def _stand_in(module: types.ModuleType, global_name: str) -> Any:
    safe_torch = _Overriding(torch, load=weights_only_load)
    if global_name == "pickle":
        return _Overriding(pickle, load=restricted_pickle_load)
    if global_name == "torch":
        return safe_torch
    return _Overriding(getattr(module, global_name), torch=safe_torch)  # 0.19's maybe_msc


@functools.cache
def apply_safe_checkpoint_loading() -> None:
    """Install the restricted loaders in the seams (idempotent).

    Raises :class:`SeamMovedError` if a seam is not where torch 2.6-2.13 /
    Megatron-Core 0.16-0.19 have it: loading checkpoints unrestricted is not an option.
    """
    common = next(
        (
            seam
            for seam in _COMMON_SEAMS
            if _loads_through(importlib.import_module(seam[0]), seam[1], seam[2])
        ),
        _COMMON_SEAMS[0],
    )
    for module_name, global_name, function in (*_SEAMS, common):
        module = importlib.import_module(module_name)
        if not _loads_through(module, global_name, function):
            raise SeamMovedError(
                f"megatron-salt: {module_name}.{function} no longer loads through "
                f"{global_name}.load; the restricted checkpoint loading (patches/README.md) "
                "must be ported to this torch/megatron-core before checkpoints can be loaded"
            )
        setattr(module, global_name, _stand_in(module, global_name))
