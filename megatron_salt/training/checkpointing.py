"""Sharded checkpoints with Megatron-Core's ``dist_checkpointing``, written atomically.

Layout (Megatron-LM's, so its tooling recognises it)::

    {save}/latest_checkpointed_iteration.txt
    {save}/iter_0000100/            dist_checkpointing files
    {save}/iter_0000100/model_config.json
    {save}/iter_0000100/run_args.json
    {save}/iter_0000100/manifest.json   every file's size and blake2b, written last

A checkpoint holds the student model, the optimizer, the LR scheduler, every
rank's RNG states, the iteration and the data position (samples consumed on
each dataset). It never holds the teacher. Each save goes to
``iter_N.partial`` and is renamed only after every rank has finished, and the
tracker file is replaced atomically after that, so a run killed mid-save resumes
from the previous complete checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, parallel_state
from megatron.core.dist_checkpointing.mapping import ShardedObject
from torch.distributed.checkpoint.api import CheckpointException

from megatron_salt.checkpoint_dir import (
    TRACKER_FILE,
    CheckpointError,
    TrainState,
    iteration_dir,
    latest_iteration,
    open_checkpoint,
    reading_checkpoint,
    resolve_checkpoint,
    write_manifest,
)
from megatron_salt.compat import current_device as device
from megatron_salt.compat.versions import write_legacy_common_state
from megatron_salt.config import ModelConfig
from megatron_salt.rng import capture_rng_state, restore_rng_state
from megatron_salt.training.arguments import FlagError

logger = logging.getLogger(__name__)

RUN_ARGS_FILE = "run_args.json"
# Megatron-LM's default: parallel save/load, resharding only across data-parallel sizes.
OPTIMIZER_METADATA = {"distrib_optim_sharding_type": "dp_reshardable"}


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


def _rng_sharded_object(data: Any = None) -> ShardedObject:
    """Per-rank RNG state, addressed by (pp, tp, dp) so each rank gets its own back."""
    shape = (
        parallel_state.get_pipeline_model_parallel_world_size(),
        parallel_state.get_tensor_model_parallel_world_size(),
        parallel_state.get_data_parallel_world_size(),
    )
    offset = (
        parallel_state.get_pipeline_model_parallel_rank(),
        parallel_state.get_tensor_model_parallel_rank(),
        parallel_state.get_data_parallel_rank(),
    )
    return ShardedObject("rng_state", data, shape, offset, replica_id=0)


def _layout() -> dict[str, int]:
    return {
        "tensor_model_parallel_size": parallel_state.get_tensor_model_parallel_world_size(),
        "pipeline_model_parallel_size": parallel_state.get_pipeline_model_parallel_world_size(),
        "data_parallel_size": parallel_state.get_data_parallel_world_size(),
    }


def _sharded_state(
    model: torch.nn.Module, optimizer: Any | None, *, is_loading: bool
) -> dict[str, Any]:
    model_sd = _unwrap(model).sharded_state_dict()
    state: dict[str, Any] = {"model": model_sd}
    if optimizer is not None:
        state["optimizer"] = optimizer.sharded_state_dict(
            model_sd, is_loading=is_loading, metadata=OPTIMIZER_METADATA
        )
    return state


def save_checkpoint(
    root: str | Path,
    iteration: int,
    *,
    model: torch.nn.Module,
    optimizer: Any,
    scheduler: Any,
    train_state: TrainState,
    model_cfg: ModelConfig,
    run_args: dict[str, Any],
) -> Path:
    """Save atomically (collective over all ranks); return the final directory."""
    root = Path(root)
    final = iteration_dir(root, iteration)
    partial = final.with_name(final.name + ".partial")
    rank = dist.get_rank()
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        if partial.exists():
            shutil.rmtree(partial)  # left by a run killed mid-save
        partial.mkdir()
    dist.barrier()

    try:
        state = _sharded_state(model, optimizer, is_loading=False)
        state["rng_state"] = _rng_sharded_object(capture_rng_state())
        state["opt_param_scheduler"] = scheduler.state_dict()
        state["train_state"] = train_state.to_dict(layout=_layout())
        dist_checkpointing.save(state, str(partial))

        if rank == 0:
            write_legacy_common_state(partial)
            model_cfg.save(partial)
            (partial / RUN_ARGS_FILE).write_text(
                json.dumps(run_args, indent=2, sort_keys=True, default=str)
            )
        dist.barrier()
        write_manifest(partial, iteration)  # collective; the last file of the checkpoint
        dist.barrier()
    except (Exception, CheckpointException) as err:  # noqa: BLE001 - reported in one line
        raise _save_failed(err, root, partial) from None
    if rank == 0:
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
        tracker = root / TRACKER_FILE
        tmp = tracker.with_suffix(".tmp")
        try:
            tmp.write_text(f"{iteration}\n")
            os.replace(tmp, tracker)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise CheckpointError(
                f"{final} is complete but {tracker} could not be updated ({err.strerror}); "
                f"pass --load {final} to resume from it"
            ) from None
    dist.barrier()
    return final


def _save_failed(err: BaseException, root: Path, partial: Path) -> CheckpointError:
    """Remove the partial checkpoint and say what happened in one line (disk full above all)."""
    text = str(err)
    try:
        free = shutil.disk_usage(partial if partial.exists() else root).free
    except OSError:
        free = -1
    full = (
        any(getattr(e, "errno", None) == errno.ENOSPC for e in _chain(err))
        or "No space left on device" in text
        or 0 <= free < 1 << 20  # torch's zip writer reports a short write as "unexpected pos"
    )
    if dist.get_rank() == 0:
        shutil.rmtree(partial, ignore_errors=True)
    previous = latest_iteration(root)
    kept = (
        f"the previous checkpoint {iteration_dir(root, previous)} is intact"
        if previous is not None
        else "no earlier checkpoint"
    )
    if full:
        return CheckpointError(f"no space left on device writing {partial} ({kept})")
    first = text.strip().splitlines()[-1] if text.strip() else type(err).__name__
    return CheckpointError(f"cannot write {partial}: {first} ({kept})")


def _chain(err: BaseException):
    while err is not None:
        yield err
        if isinstance(err, CheckpointException) and err.failures:
            yield from (failure[0] for failure in err.failures.values())
        err = err.__cause__ or err.__context__


def load_checkpoint(
    root: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: Any,
    scheduler: Any,
    load_optimizer: bool = True,
    load_rng: bool = True,
) -> TrainState:
    """Restore everything :func:`save_checkpoint` wrote; return its ``train_state``.

    ``root``: a checkpoint root or ``iter_N`` directory, already checked by
    :func:`open_checkpoint` (the caller decides about verification and fallback).
    """
    ckpt = resolve_checkpoint(root)
    with reading_checkpoint(ckpt):
        common = dist_checkpointing.load_common_state_dict(str(ckpt))
        train_state = common.get("train_state") if isinstance(common, dict) else None
        if train_state is None and isinstance(common, dict) and "args" in common:
            # Megatron-LM's pretrain_gpt.py: weights are all we take
            if load_optimizer:
                raise CheckpointError(
                    f"{ckpt} was not written by pretrain_salt.py (Megatron-LM?): start from its "
                    "weights with --finetune"
                )
            train_state = {"iteration": common.get("iteration", 0)}
        if not isinstance(train_state, dict) or "iteration" not in train_state:
            raise CheckpointError(f"{ckpt}: not a pretrain_salt.py checkpoint (no train_state)")
        if load_optimizer and train_state.get("weights_only"):
            raise CheckpointError(
                f"{ckpt} holds model weights only "
                f"({train_state.get('imported_from', 'imported')}): start from it with --finetune"
            )
        same_layout = train_state.get("layout") == _layout()
        state = _sharded_state(model, optimizer if load_optimizer else None, is_loading=True)
        if load_rng and same_layout:
            state["rng_state"] = _rng_sharded_object()
        loaded = dist_checkpointing.load(state, str(ckpt))
    _unwrap(model).load_state_dict(loaded["model"])
    if load_optimizer:
        # no_grad: with fp32 params the distributed optimizer's main params are views
        # of the (grad-requiring) model params, and loading copies into them in place.
        with torch.no_grad():
            optimizer.load_state_dict(loaded["optimizer"])
        scheduler.load_state_dict(loaded["opt_param_scheduler"])
    if "rng_state" in state:
        restore_rng_state(loaded["rng_state"])
    elif load_rng:
        logger.warning(
            "checkpoint %s was saved with layout %s, this run is %s: RNG states not restored",
            ckpt,
            train_state.get("layout"),
            _layout(),
        )
    logger.info("loaded checkpoint %s (iteration %d)", ckpt, train_state["iteration"])
    return TrainState.from_dict(train_state)


class Checkpointer:
    """A run's checkpoints: when it saves, and the pair that saves and restores its state.

    Saves every ``--save-interval`` steps, at the last step and when the run exits early;
    resumes from ``--load`` (or, with ``--finetune``, takes its weights alone).
    """

    def __init__(
        self,
        args: argparse.Namespace,
        *,
        model: torch.nn.Module,
        optimizer: Any,
        scheduler: Any,
        model_cfg: ModelConfig,
    ) -> None:
        self.args = args
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        # Saved with the padded vocab the weights have, so any later run rebuilds that size.
        self.model_cfg = dataclasses.replace(
            model_cfg,
            trained_padded_vocab_size=model_cfg.padded_vocab_size(args.tensor_model_parallel_size),
        )

    def due(self, iteration: int, *, exiting: bool = False) -> bool:
        args = self.args
        if not args.save:
            return False
        return (
            bool(args.save_interval and iteration % args.save_interval == 0)
            or iteration == args.train_iters
            or exiting
        )

    def save(self, state: TrainState) -> None:
        """Save ``state`` with the model, optimizer, scheduler and RNG (collective)."""
        start = time.perf_counter()
        # Ranks time their steps independently; the checkpoint keeps the slowest.
        elapsed = torch.tensor([state.train_time_s], dtype=torch.float64, device=device())
        dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
        state.train_time_s = elapsed.item()
        try:
            path = save_checkpoint(
                self.args.save,
                state.iteration,
                model=self.model,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                train_state=state,
                model_cfg=self.model_cfg,
                run_args=vars(self.args),
            )
        except CheckpointError as err:
            raise FlagError(f"pretrain_salt.py: error: --save {self.args.save}: {err}") from None
        logger.info("saved checkpoint %s in %.1fs", path, time.perf_counter() - start)

    def restore(self) -> TrainState | None:
        """Resume from ``--load``: its state, or None when starting fresh (or finetuning)."""
        args = self.args
        try:
            if latest_iteration(args.load) is None:
                if args.finetune:
                    raise CheckpointError(f"{args.load} holds no checkpoint to finetune from")
                logger.info("no checkpoint in %s yet: starting from scratch", args.load)
                return None
            opened = open_checkpoint(
                args.load,
                verify=not args.no_ckpt_verify,
                fallback=args.ckpt_load_fallback,
                log=logger.warning,
            )
            state = load_checkpoint(
                opened.path,
                model=self.model,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                load_optimizer=not (args.no_load_optim or args.finetune),
                load_rng=not (args.no_load_rng or args.finetune),
            )
        except CheckpointError as err:
            raise FlagError(f"pretrain_salt.py: error: --load: {err}") from None
        return None if args.finetune else state
