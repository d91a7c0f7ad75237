"""Optional GPU libraries (Transformer Engine, apex): detect lazily, report the path taken.

Megatron-Core warns once per module when TE or apex is missing; on a CPU
machine that is a dozen lines of noise. :mod:`megatron_salt.compat.noise` drops
exactly those warnings and :func:`describe_backends` logs one line instead
saying which path is active.
"""

from __future__ import annotations

import functools
import importlib

import torch


@functools.cache
def have_transformer_engine() -> bool:
    """True when ``transformer_engine.pytorch`` imports (it needs a GPU and CUDA)."""
    if not torch.cuda.is_available():
        return False
    try:
        importlib.import_module("transformer_engine.pytorch")
    except Exception:  # noqa: BLE001 - any import failure means "not usable"
        return False
    return True


@functools.cache
def have_apex() -> bool:
    try:
        importlib.import_module("apex")
    except Exception:  # noqa: BLE001
        return False
    return True


@functools.cache
def have_fused_softmax_kernels() -> bool:
    """True when the CUDA extensions behind Megatron-Core's ``FusedScaleMaskSoftmax`` import.

    They are built by apex (``--cuda_ext``), not shipped with megatron-core or torch. With
    ``masked_softmax_fusion`` on and fp16/bf16 attention scores, the local layer spec's
    attention imports them unconditionally, so without them it must stay off (Megatron then
    uses torch's softmax).
    """
    try:
        for name in ("scaled_masked_softmax_cuda", "scaled_upper_triang_masked_softmax_cuda"):
            importlib.import_module(name)
    except Exception:  # noqa: BLE001
        return False
    return True


def describe_backends() -> str:
    """One line for the logs: device, layer implementation, FP8 availability."""
    device = f"cuda ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else "cpu (gloo)"
    layers = "Transformer Engine" if have_transformer_engine() else "Megatron-Core local"
    fp8 = "available" if have_transformer_engine() else "unavailable (needs Transformer Engine)"
    return f"device: {device}; layers: {layers}; apex: {have_apex()}; fp8: {fp8}"


def current_device() -> torch.device:
    """The device this rank computes on: its CUDA device, or the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
