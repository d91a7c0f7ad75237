"""Shared test setup: Megatron-Core CPU patches, quiet optional-backend warnings."""

import warnings

from megatron_salt.compat import apply_cpu_patches, quiet_optional_backend_warnings

quiet_optional_backend_warnings()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    apply_cpu_patches()
