#!/usr/bin/env python
"""Score every document of Megatron .bin/.idx prefixes with an SLM (SALT_DS).

    torchrun --nproc_per_node 8 tools/score_data.py --load /ckpt/slm \
        --data-path /data/pile_text_document --score-top-k 10 --score-statistic median
"""

import sys

if __name__ == "__main__":
    from megatron_salt.compat.noise import filter_upstream_noise

    filter_upstream_noise()
    from megatron_salt.selection.cli import score_main

    sys.exit(score_main())
