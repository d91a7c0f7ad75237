"""One snapshot of every random stream a step draws from: torch's CPU and CUDA generators
and Megatron-Core's model-parallel RNG tracker (dropout inside TP regions).

Checkpoints store the snapshot (so a resumed run draws the same numbers), and the
teacher is loaded inside :func:`preserved_rng_state` (so building it consumes nothing
from the student's streams: a run with ``--kd-alpha 0`` trains like the baseline).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from megatron.core.tensor_parallel.random import get_cuda_rng_tracker


def capture_rng_state() -> dict[str, Any]:
    """``{"torch", "cuda", "tracker"}``: the state checkpoints save (keys kept stable)."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "tracker": {k: v.clone() for k, v in get_cuda_rng_tracker().get_states().items()},
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    get_cuda_rng_tracker().set_states(state["tracker"])


@contextmanager
def preserved_rng_state() -> Iterator[None]:
    """Whatever the body draws, the streams afterwards are as they were before it."""
    state = capture_rng_state()
    try:
        yield
    finally:
        restore_rng_state(state)
