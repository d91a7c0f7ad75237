"""The training loop of ``pretrain_salt.py``.

One procedural function, in the order a reader expects: distributed set-up,
student (model, DDP, optimizer, LR schedule), data, checkpoint resume, teacher,
then the steps. The KD phase is the first ``--kd-iters`` steps: the teacher
runs inside the student's ``forward_step`` and the loss is
``(1-w)*CE + w*KD``; at ``--kd-iters`` the teacher, its process groups and its
memory are released and training continues as plain next-token prediction.
Without ``--kd-teacher-load`` this is a plain Megatron-Core GPT pretraining run,
the baseline SALT is compared against.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
import traceback
from typing import Any

import torch.distributed as dist

from megatron_salt.compat import describe_backends, filter_upstream_noise, warn_if_untested
from megatron_salt.errors import (
    debug_requested,
    exit_after_peer_failure,
    peer_failed,
    report_failure,
)
from megatron_salt.parallel import initialize_distributed
from megatron_salt.training.arguments import FlagError, parse_args

logger = logging.getLogger("megatron_salt")


def _setup_logging(rank: int) -> None:
    logging.basicConfig(
        level=logging.INFO
        if rank in (0, int(os.environ.get("WORLD_SIZE", "1")) - 1)
        else logging.WARNING,
        format=f"[rank{rank}] %(message)s",
        stream=sys.stdout,
        force=True,
    )
    filter_upstream_noise()
    for noisy in ("megatron.core", "torch.distributed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def pretrain(args: argparse.Namespace) -> dict[str, Any]:
    """Run training; return a summary (final losses, timings) for callers and tests."""
    from megatron_salt.training.trainer import Trainer

    initialize_distributed(args.distributed_backend)
    _setup_logging(dist.get_rank())
    warn_if_untested()
    logger.info("megatron-salt: %s", describe_backends())
    trainer = Trainer(args)
    try:
        return trainer.train()
    finally:
        trainer.close()


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        pretrain(args)
    except FlagError as err:
        if debug_requested(argv) and err.__context__ is not None:
            traceback.print_exception(err.__context__)
        report_failure(str(err.code))
        return 2
    except OSError as err:
        if err.errno != errno.ENOSPC or debug_requested(argv):
            raise
        report_failure(f"pretrain_salt.py: error: no space left on device writing {err.filename}")
        return 2
    except Exception as err:
        if peer_failed(err) and not debug_requested(argv):
            return exit_after_peer_failure(err, "pretrain_salt.py")
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0
