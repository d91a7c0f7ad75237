#!/usr/bin/env python
"""Show SLM score distributions and what a --kd-data-selection rule keeps.

python tools/select_data.py --data-path /data/pile_text_document --kd-data-selection top:0.5 \
    [--kd-data-selection-by subset]
"""

import sys

if __name__ == "__main__":
    from megatron_salt.compat.noise import filter_upstream_noise

    filter_upstream_noise()
    from megatron_salt.selection.cli import select_main

    sys.exit(select_main())
