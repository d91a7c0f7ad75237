"""Finding a checkpoint and its architecture, whoever wrote it.

Three writers share Megatron-LM's directory layout (``{root}/latest_checkpointed_iteration.txt``
naming ``{root}/iter_NNNNNNN/``, or ``release``):

* ``pretrain_salt.py`` and ``tools/convert_checkpoint.py import-hf``: the iteration
  directory holds ``model_config.json``;
* Megatron-LM's ``pretrain_gpt.py`` (``--ckpt-format torch_dist``): no model config, the
  architecture is in the ``args`` Namespace of its ``common.pt``.

:func:`load_model_config` reads either. Teacher loading, scoring and export go through
here, so each accepts all three.
"""

from __future__ import annotations

from pathlib import Path

from megatron_salt.config import MODEL_CONFIG_FILE, ModelConfig

TRACKER_FILE = "latest_checkpointed_iteration.txt"
COMMON_STATE_FILE = "common.pt"  # dist_checkpointing's non-sharded state


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete, or does not fit this run."""


def iteration_dir(root: str | Path, iteration: int) -> Path:
    return Path(root) / f"iter_{iteration:07d}"


def read_tracker(root: str | Path) -> str | None:
    """The tracker's content (an iteration number or ``release``), None without one."""
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
    return (path / MODEL_CONFIG_FILE).is_file() or (path / COMMON_STATE_FILE).is_file()


def resolve_checkpoint(path: str | Path, iteration: int | None = None) -> Path:
    """A checkpoint root (tracker file) or an iteration directory -> the iteration directory.

    ``iteration`` picks ``iter_N`` under a root instead of the tracker's latest.
    """
    path = Path(path)
    if iteration is not None:
        ckpt = iteration_dir(path, iteration)
        if not ckpt.is_dir():
            raise CheckpointError(f"{path}: no iteration {iteration} ({ckpt} is missing)")
        return ckpt
    if _is_checkpoint_dir(path) and read_tracker(path) is None:
        return path
    text = read_tracker(path)
    if text is None:
        raise CheckpointError(
            f"{path}: no {TRACKER_FILE}, {MODEL_CONFIG_FILE} or {COMMON_STATE_FILE}: "
            "not a checkpoint"
        )
    ckpt = path / "release" if text == "release" else iteration_dir(path, int(text))
    if not ckpt.is_dir():
        raise CheckpointError(f"{path}: {TRACKER_FILE} names {text} but {ckpt} is missing")
    return ckpt


def load_model_config(ckpt_dir: Path) -> ModelConfig:
    """The architecture of an iteration directory: ``model_config.json`` or Megatron-LM args."""
    if (ckpt_dir / MODEL_CONFIG_FILE).is_file():
        return ModelConfig.load(ckpt_dir)
    if (ckpt_dir / COMMON_STATE_FILE).is_file():
        from megatron_salt.convert.megatron_lm import model_config_from_megatron_lm

        return model_config_from_megatron_lm(ckpt_dir)
    raise FileNotFoundError(
        f"{ckpt_dir}: neither {MODEL_CONFIG_FILE} (pretrain_salt.py, import-hf) nor "
        f"{COMMON_STATE_FILE} with Megatron-LM arguments"
    )
