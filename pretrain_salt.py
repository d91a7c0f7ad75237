#!/usr/bin/env python
"""Megatron-Core GPT pretraining with SALT. Run with torchrun; see README.md.

torchrun --nproc_per_node=8 pretrain_salt.py --num-layers 32 ...
    --kd-teacher-load /ckpt/slm --kd-iters 36000 --kd-alpha 0.5
"""

import sys

if __name__ == "__main__":
    # Imports stay under the guard: Megatron's checkpoint writer spawns a helper
    # process that re-imports this file, and it should not pay for Megatron.
    from megatron_salt.compat.noise import filter_upstream_noise

    filter_upstream_noise()  # before Megatron-Core's imports warn about TE/apex
    from megatron_salt.training.loop import main

    sys.exit(main())
