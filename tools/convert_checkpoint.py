#!/usr/bin/env python
"""HuggingFace checkpoints in and out (see docs/checkpoints.md).

    python tools/convert_checkpoint.py import-hf --hf-dir pythia-410m --save ckpt/pythia-410m
    python tools/convert_checkpoint.py export-hf --load ckpt/student --hf-dir student-hf
"""

import sys

if __name__ == "__main__":
    from megatron_salt.compat.backends import quiet_optional_backend_warnings

    quiet_optional_backend_warnings()
    from megatron_salt.convert.cli import main

    sys.exit(main())
