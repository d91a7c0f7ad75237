"""Compatibility layers: Megatron-Core on CPU, optional GPU libraries."""

from megatron_salt.compat.backends import (
    current_device,
    describe_backends,
    have_apex,
    have_fused_softmax_kernels,
    have_transformer_engine,
    quiet_optional_backend_warnings,
    quiet_upstream_warnings,
)
from megatron_salt.compat.cpu import apply_cpu_patches, cpu_patches_needed

__all__ = [
    "current_device",
    "apply_cpu_patches",
    "cpu_patches_needed",
    "describe_backends",
    "have_apex",
    "have_fused_softmax_kernels",
    "have_transformer_engine",
    "quiet_optional_backend_warnings",
    "quiet_upstream_warnings",
]
