"""Compatibility layers: Megatron-Core on CPU, optional GPU libraries."""

from megatron_salt.compat.backends import (
    current_device,
    describe_backends,
    have_apex,
    have_fused_softmax_kernels,
    have_transformer_engine,
)
from megatron_salt.compat.cpu import apply_cpu_patches, cpu_patches_needed
from megatron_salt.compat.noise import filter_upstream_noise
from megatron_salt.compat.versions import TESTED_MEGATRON_CORE, warn_if_untested

__all__ = [
    "current_device",
    "apply_cpu_patches",
    "cpu_patches_needed",
    "describe_backends",
    "have_apex",
    "have_fused_softmax_kernels",
    "have_transformer_engine",
    "filter_upstream_noise",
    "warn_if_untested",
    "TESTED_MEGATRON_CORE",
]
