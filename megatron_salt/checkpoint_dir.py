"""Checkpoint directories on disk: layout, manifest, verification, safe reading.

Layout (Megatron-LM's)::

    {root}/latest_checkpointed_iteration.txt   an iteration number, or ``release``
    {root}/iter_0000100/            dist_checkpointing files, model_config.json,
                                    run_args.json, manifest.json (written last)

Three writers share it: ``pretrain_salt.py`` and ``tools/convert_checkpoint.py
import-hf`` (with ``model_config.json``), and Megatron-LM's ``pretrain_gpt.py``
(``--ckpt-format torch_dist``), whose architecture is the ``args`` in its common
state (:func:`load_model_config` reads either).

``manifest.json`` records every file's size and blake2b digest. Loading checks it
(every rank hashes its share of the files), so a truncated, flipped or missing file
is named before anything is read, together with the newest complete checkpoint of
the same root. Checkpoints written before manifests existed still load (with a note).
Whatever the manifest says, dist_checkpointing's pickles are read through the
restricted loaders of :mod:`megatron_salt.compat.safe_load`, so a crafted file
(which can come with a matching manifest) is refused rather than run.

This module sits below ``training/``, ``teacher.py`` and ``selection/``: all of them
open checkpoints through it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from megatron_salt.compat.safe_load import (
    UnsafeCheckpointError,
    apply_safe_checkpoint_loading,
    restricted_pickle_load,
)
from megatron_salt.config import MODEL_CONFIG_FILE, ModelConfig

logger = logging.getLogger(__name__)

TRACKER_FILE = "latest_checkpointed_iteration.txt"
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "megatron-salt-manifest/1"
METADATA_FILE = ".metadata"  # torch.distributed.checkpoint's
COMMON_FILE = "common.pt"  # Megatron-Core's non-sharded state
_BLOCK = 1 << 22


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete, damaged, unsafe or does not fit this run."""


# --- layout ---------------------------------------------------------------------


@dataclass
class TrainState:
    """Where a run stands; every checkpoint's common state holds it as ``train_state``.

    The one place that dictionary is written (:meth:`to_dict`) and read back
    (:meth:`from_dict`): by the trainer's saves and resumes, and by import-hf (a state
    at iteration 0 marked ``weights_only``).
    """

    iteration: int = 0
    consumed_samples: dict[str, int] = field(default_factory=lambda: {"train": 0, "kd": 0})
    train_time_s: float = 0.0  # the slowest rank's time in steps, over all launches
    kd_released_at: int | None = None  # iteration the teacher was released at

    def to_dict(self, **extra: Any) -> dict[str, Any]:
        """The checkpoint's ``train_state``; ``extra``: ``layout``, ``weights_only``, ..."""
        return {
            "iteration": self.iteration,
            "consumed_samples": dict(self.consumed_samples),
            "train_time_s": self.train_time_s,
            "kd_released_at": self.kd_released_at,
            **extra,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainState:
        """Read back :meth:`to_dict` (a Megatron-LM checkpoint gives the iteration alone)."""
        return cls(
            iteration=values["iteration"],
            consumed_samples=dict(values.get("consumed_samples") or {"train": 0, "kd": 0}),
            train_time_s=values.get("train_time_s", 0.0),
            kd_released_at=values.get("kd_released_at"),
        )


def iteration_dir(root: str | Path, iteration: int) -> Path:
    return Path(root) / f"iter_{iteration:07d}"


def read_tracker(root: str | Path) -> str | None:
    """The tracker's content (an iteration, or Megatron-LM's ``release``); None without one."""
    tracker = Path(root) / TRACKER_FILE
    if not tracker.is_file():
        return None
    text = tracker.read_text().strip()
    if not (text.isdigit() or text == "release"):
        raise CheckpointError(f"{tracker}: expected an iteration number, found {text!r}")
    return text


def latest_iteration(root: str | Path) -> int | None:
    text = read_tracker(root)
    if text is None:
        return None
    return 0 if text == "release" else int(text)


def _is_checkpoint_dir(path: Path) -> bool:
    # model_config.json: ours and import-hf's; .metadata: any torch_dist checkpoint
    # (Megatron-LM's pretrain_gpt.py writes no model config).
    return (path / MODEL_CONFIG_FILE).is_file() or (path / METADATA_FILE).is_file()


def resolve_checkpoint(path: str | Path, iteration: int | None = None) -> Path:
    """A checkpoint root (with a tracker file) or an iteration directory -> the iteration dir.

    ``iteration`` picks ``iter_N`` under a root instead of the tracker's latest.
    """
    path = Path(path)
    if iteration is not None:
        ckpt = iteration_dir(path, iteration)
        if not ckpt.is_dir():
            raise CheckpointError(f"{path}: no iteration {iteration} ({ckpt} is missing)")
        return ckpt
    text = read_tracker(path)
    if text is None:
        if _is_checkpoint_dir(path):
            return path
        raise CheckpointError(
            f"{path}: no {TRACKER_FILE}, {MODEL_CONFIG_FILE} or {METADATA_FILE}: not a checkpoint"
        )
    ckpt = path / "release" if text == "release" else iteration_dir(path, int(text))
    if not ckpt.is_dir():
        raise CheckpointError(f"{path}: {TRACKER_FILE} names {text} but {ckpt} is missing")
    return ckpt


def iterations_on_disk(root: str | Path) -> list[int]:
    """Iterations with a published ``iter_N`` directory, newest first."""
    found = []
    for child in Path(root).glob("iter_*"):
        suffix = child.name.removeprefix("iter_")
        if suffix.isdigit() and child.is_dir():
            found.append(int(suffix))
    return sorted(found, reverse=True)


def load_model_config(ckpt: Path) -> ModelConfig:
    """The architecture of an iteration directory; any problem names the file.

    ``model_config.json`` (pretrain_salt.py, import-hf), else the ``args`` Megatron-LM's
    ``pretrain_gpt.py`` stores in the common state.
    """
    path = ckpt / MODEL_CONFIG_FILE
    if not path.is_file() and (ckpt / METADATA_FILE).is_file():
        from megatron_salt.convert.megatron_lm import model_config_from_megatron_lm

        apply_safe_checkpoint_loading()  # the args are unpickled from the common state
        return model_config_from_megatron_lm(ckpt)
    try:
        return ModelConfig.load(ckpt)
    except (OSError, ValueError, TypeError) as err:
        reason = str(err).removeprefix(f"{path}: ")
        raise CheckpointError(f"{path}: unreadable model config ({reason})") from None


# --- manifest -------------------------------------------------------------------


def file_digest(path: str | Path) -> str:
    """blake2b-128 of a file, read in 4 MiB blocks."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _checkpoint_files(ckpt: Path) -> list[str]:
    return sorted(
        str(p.relative_to(ckpt))
        for p in ckpt.rglob("*")
        if p.is_file() and p.name != MANIFEST_FILE and not p.name.endswith(".tmp")
    )


def _rank_and_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather(values: Any) -> list[Any]:
    import torch.distributed as dist

    rank, world = _rank_and_world()
    if world == 1:
        return [values]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, values)
    return out


def write_manifest(ckpt: Path, iteration: int) -> None:
    """Hash every file of ``ckpt`` (shared over the ranks) and publish ``manifest.json``.

    Collective when distributed is initialised; rank 0 writes (temp name + rename).
    """
    rank, world = _rank_and_world()
    names = _checkpoint_files(ckpt)
    mine = {
        name: {"size": (ckpt / name).stat().st_size, "blake2b": file_digest(ckpt / name)}
        for name in names[rank::world]
    }
    files: dict[str, dict] = {}
    for part in _gather(mine):
        files.update(part)
    if rank == 0:
        manifest = {
            "format": MANIFEST_FORMAT,
            "iteration": iteration,
            "files": dict(sorted(files.items())),
        }
        tmp = ckpt / (MANIFEST_FILE + ".tmp")
        with open(tmp, "w") as f:
            json.dump(manifest, f, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, ckpt / MANIFEST_FILE)


def read_manifest(ckpt: Path) -> dict[str, dict] | None:
    """``{file: {size, blake2b}}``, or None for a checkpoint written without one."""
    path = ckpt / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
        if manifest.get("format") != MANIFEST_FORMAT or not isinstance(files, dict):
            raise ValueError(f"format {manifest.get('format')!r}")
        return {
            name: {"size": int(v["size"]), "blake2b": str(v["blake2b"])}
            for name, v in files.items()
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{path}: unreadable manifest ({err})") from None


def _size_problem(ckpt: Path, name: str, size: int) -> str | None:
    path = ckpt / name
    try:
        actual = path.stat().st_size
    except FileNotFoundError:
        return f"{path}: missing (listed in {MANIFEST_FILE})"
    except OSError as err:
        return f"{path}: unreadable ({err.strerror})"
    if actual != size:
        return f"{path}: {actual} bytes, {MANIFEST_FILE} says {size} (truncated or damaged)"
    return None


def _file_problem(ckpt: Path, name: str, entry: dict) -> str | None:
    problem = _size_problem(ckpt, name, entry["size"])
    if problem is None:
        try:
            if file_digest(ckpt / name) != entry["blake2b"]:
                problem = f"{ckpt / name}: content differs from {MANIFEST_FILE} (damaged)"
        except OSError as err:
            problem = f"{ckpt / name}: unreadable ({err.strerror})"
    return problem


def complete_by_size(ckpt: Path) -> bool:
    """Cheap: a manifest whose files are all there with their sizes (no hashing)."""
    try:
        manifest = read_manifest(ckpt)
    except CheckpointError:
        return False
    if manifest is None:
        return False
    return all(_size_problem(ckpt, n, e["size"]) is None for n, e in manifest.items())


def newest_complete_iteration(root: Path, below: int | None = None) -> int | None:
    """Newest ``iter_N`` of ``root`` (below ``below``) whose files match its manifest's sizes."""
    for iteration in iterations_on_disk(root):
        if below is not None and iteration >= below:
            continue
        if complete_by_size(iteration_dir(root, iteration)):
            return iteration
    return None


def verify_manifest(ckpt: Path) -> bool:
    """Check every file against ``manifest.json`` (hashing shared over the ranks).

    Returns False for a checkpoint without a manifest; raises :class:`CheckpointError`
    naming the first damaged file. Collective when distributed is initialised.
    """
    manifest = read_manifest(ckpt)
    if manifest is None:
        return False
    rank, world = _rank_and_world()
    names = sorted(manifest)
    problems = [p for n in names[rank::world] if (p := _file_problem(ckpt, n, manifest[n]))]
    everything = sorted(p for part in _gather(problems) for p in part)
    if everything:
        more = f" (and {len(everything) - 1} more)" if len(everything) > 1 else ""
        raise CheckpointError(everything[0] + more)
    return True


# --- structure (cheap, with or without a manifest) ----------------------------------


def read_metadata(ckpt: Path) -> Any:
    """torch.distributed.checkpoint's ``.metadata``, unpickled with the restricted loader."""
    path = ckpt / METADATA_FILE
    try:
        with open(path, "rb") as f:
            return restricted_pickle_load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing (not a dist_checkpointing checkpoint)") from None
    except UnsafeCheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a damaged file
        raise CheckpointError(
            f"{path}: truncated or damaged ({type(err).__name__}: {err})"
        ) from None


def check_structure(ckpt: Path) -> None:
    """Cheap checks that name the file: ``.metadata`` readable (restricted), every shard
    at least as long as ``.metadata`` says, ``common.pt`` an intact zip archive."""
    metadata = read_metadata(ckpt)
    needed: dict[str, int] = {}
    for info in (getattr(metadata, "storage_data", None) or {}).values():
        name = getattr(info, "relative_path", None)
        offset, length = getattr(info, "offset", None), getattr(info, "length", None)
        if name is None or offset is None or length is None:
            continue  # another torch's storage layout: leave it to the load itself
        needed[name] = max(needed.get(name, 0), int(offset) + int(length))
    for name, end in sorted(needed.items()):
        path = ckpt / name
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise CheckpointError(f"{path}: missing (named in {METADATA_FILE})") from None
        if size < end:
            raise CheckpointError(
                f"{path}: truncated ({size} bytes, {METADATA_FILE} needs at least {end})"
            )
    common = ckpt / COMMON_FILE
    if common.exists():
        try:
            with zipfile.ZipFile(common) as archive:
                bad = archive.testzip()
        # Python 3.12's zipfile can fail decoding a damaged member name (UnicodeDecodeError).
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
            raise CheckpointError(f"{common}: damaged ({err})") from None
        if bad is not None:
            raise CheckpointError(f"{common}: damaged (bad CRC in {bad})")


# --- opening and reading ------------------------------------------------------------


@dataclass
class OpenedCheckpoint:
    path: Path  # the iter_N directory
    verified: bool  # manifest checked (False: skipped, or no manifest)


def open_checkpoint(
    path: str | Path,
    *,
    verify: bool = True,
    fallback: bool = False,
    iteration: int | None = None,
    log: Callable[[str], None] = logger.info,
) -> OpenedCheckpoint:
    """Resolve, verify and structurally check a checkpoint before anything is unpickled.

    ``fallback``: when the checkpoint ``path`` resolves to is damaged, take the newest
    complete older one of the same root (and say so). Collective when distributed
    is initialised (the manifest check).
    """
    apply_safe_checkpoint_loading()
    ckpt = resolve_checkpoint(path, iteration)
    try:
        return _open(ckpt, verify, log)
    except CheckpointError as err:
        root = ckpt.parent
        iteration = _iteration_of(ckpt)
        older = newest_complete_iteration(root, below=iteration) if iteration is not None else None
        if older is None:
            raise CheckpointError(f"{err}; no older complete checkpoint in {root}") from None
        if not fallback:
            raise CheckpointError(
                f"{err}; newest complete checkpoint: {iteration_dir(root, older)}"
            ) from None
        log(f"{err}; falling back to the newest complete checkpoint {iteration_dir(root, older)}")
        return _open(iteration_dir(root, older), verify, log)


def _iteration_of(ckpt: Path) -> int | None:
    suffix = ckpt.name.removeprefix("iter_")
    return int(suffix) if suffix.isdigit() else None


def _open(ckpt: Path, verify: bool, log: Callable[[str], None]) -> OpenedCheckpoint:
    verified = False
    if verify:
        verified = verify_manifest(ckpt)
        if not verified:
            log(f"note: {ckpt} has no {MANIFEST_FILE} (written before manifests): not verified")
    else:
        log(f"{ckpt}: manifest verification skipped (--no-ckpt-verify)")
    check_structure(ckpt)
    return OpenedCheckpoint(ckpt, verified)


@contextlib.contextmanager
def reading_checkpoint(ckpt: Path) -> Iterator[None]:
    """Turn any failure inside a dist_checkpointing load into one :class:`CheckpointError`."""
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        yield
    except CheckpointError:
        raise
    except (Exception, CheckpointException) as err:  # noqa: BLE001
        raise CheckpointError(describe_load_error(err, ckpt)) from None


def describe_load_error(err: BaseException, ckpt: Path) -> str:
    """One line for a failed load: the underlying error of the first failing rank."""
    from torch.distributed.checkpoint.api import CheckpointException

    while isinstance(err, CheckpointException) and err.failures:
        err = next(iter(err.failures.values()))[0]
    cause: BaseException | None = err
    while cause is not None and not isinstance(cause, UnsafeCheckpointError):
        cause = cause.__cause__ or cause.__context__
    if cause is not None:
        return str(cause) if cause.source else f"{ckpt}: {cause}"
    text = str(err).strip().splitlines()
    first = text[0] if text else ""
    return f"{ckpt}: cannot load ({type(err).__name__}: {first})"
