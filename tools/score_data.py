#!/usr/bin/env python
"""Score every document (or every training window) of Megatron .bin/.idx prefixes with an SLM.

    torchrun --nproc_per_node 8 tools/score_data.py --load /ckpt/slm \
        --data-path /data/pile_text_document --score-top-k 10 --score-statistic median \
        [--score-unit window --score-seq-length 2048]

See docs/data_selection.md (SALT_DS).
"""

import sys

if __name__ == "__main__":
    from megatron_salt.compat.noise import filter_upstream_noise

    filter_upstream_noise()
    from megatron_salt.selection.cli import score_main

    sys.exit(score_main())
