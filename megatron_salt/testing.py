"""Run a function on N gloo ranks in forked processes and collect what each returns.

Used by the test suite and the benchmarks. Forking (rather than spawning) lets the
children reuse the parent's already-imported torch and megatron-core, which is
most of the start-up cost of a multi-process test on CPU.
"""

from __future__ import annotations

import functools
import os
import pickle
import queue
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from megatron_salt.parallel import free_port, initialize_distributed


class RankFailed(RuntimeError):
    """A rank raised; the message carries that rank's traceback."""


@functools.cache
def _share_checkpoint_writer_queue() -> None:
    """Start dist_checkpointing's result-queue manager once, in the parent.

    Megatron-Core's filesystem writer lazily starts a ``spawn``-ed manager process
    (seconds on CPU: the child re-imports ``__main__``) the first time a process
    saves. Forked ranks inherit the parent's manager instead of each starting one.
    """
    from megatron_salt.compat.versions import checkpoint_write_results_queue

    checkpoint_write_results_queue()


def _rank_main(
    rank: int,
    world_size: int,
    port: int,
    fn: Callable[..., Any],
    args: tuple,
    kwargs: dict,
    results: mp.Queue,
) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
    )
    # Two ranks on two cores: one intra-op thread each avoids oversubscription.
    torch.set_num_threads(1)
    try:
        # A short timeout: a test rank stuck in a collective fails the test, not the suite.
        initialize_distributed("gloo", timeout=timedelta(seconds=120))
        # Plain pickle: torch's queue pickler would share tensors through file
        # descriptors, which break when this process exits before the parent reads.
        value = pickle.dumps(fn(*args, **kwargs))
        results.put((rank, True, value))
    except BaseException:  # noqa: BLE001 - the traceback is sent to the parent
        results.put((rank, False, traceback.format_exc()))
    finally:
        try:
            from megatron.core import parallel_state

            parallel_state.destroy_model_parallel()
        except Exception:  # noqa: BLE001
            pass
        if dist.is_initialized():
            dist.destroy_process_group()


def run_on_ranks(
    fn: Callable[..., Any],
    world_size: int = 2,
    *args: Any,
    timeout: float = 300.0,
    **kwargs: Any,
) -> list[Any]:
    """Call ``fn(*args, **kwargs)`` on ``world_size`` gloo ranks; return values by rank.

    ``fn`` runs after ``torch.distributed`` is initialised and the CPU patches are
    applied; it sets up Megatron's parallel state itself (it knows the layout).
    Raises :class:`RankFailed` with the first failing rank's traceback.
    """
    _share_checkpoint_writer_queue()
    ctx = mp.get_context("fork")
    results = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_rank_main, args=(rank, world_size, port, fn, args, kwargs, results))
        for rank in range(world_size)
    ]
    for proc in procs:
        proc.start()
    collected: dict[int, Any] = {}
    failures: list[str] = []
    deadline = time.monotonic() + timeout
    # Drain results while the ranks run: a large result blocks its sender until read.
    while len(collected) + len(failures) < world_size:
        try:
            rank, ok, value = results.get(timeout=max(0.1, min(1.0, deadline - time.monotonic())))
        except queue.Empty:
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if time.monotonic() > deadline or dead:
                break
            continue
        if ok:
            collected[rank] = pickle.loads(value)
        else:
            failures.append(f"rank {rank} failed:\n{value}")
            # The other ranks are likely stuck in a collective now: don't wait long.
            deadline = min(deadline, time.monotonic() + 10)
    for rank, proc in enumerate(procs):
        proc.join(max(0.1, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join()
            if rank not in collected:
                failures.append(f"rank {rank} timed out after {timeout:.0f}s")
    if failures:
        raise RankFailed("\n".join(failures))
    missing = [r for r in range(world_size) if r not in collected]
    if missing:
        codes = [p.exitcode for p in procs]
        raise RankFailed(f"ranks {missing} returned nothing (exit codes {codes})")
    return [collected[r] for r in range(world_size)]
