#!/usr/bin/env python
"""HuggingFace checkpoints in and out (see docs/checkpoints.md).

python tools/convert_checkpoint.py import-hf --hf-dir pythia-410m --save ckpt/pythia-410m
python tools/convert_checkpoint.py export-hf --load ckpt/student --hf-dir student-hf
"""

import sys

if __name__ == "__main__":
    from megatron_salt.compat.noise import filter_upstream_noise

    filter_upstream_noise()
    from megatron_salt.convert.cli import main

    sys.exit(main())
