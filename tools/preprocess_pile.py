#!/usr/bin/env python
"""Tokenize Pile-format shards into Megatron .bin/.idx, optionally scoring them for SALT_DS
(--score-with; see docs/preprocessing.md).

    python tools/preprocess_pile.py --input demo_out/corpus --output-prefix demo_out/data/demo \
        --tokenizer-type SentencePieceTokenizer --tokenizer-model demo_out/tokenizer/spm.model \
        --append-eod --workers 2
"""

import sys

from megatron_salt.selection.preprocess_cli import main

if __name__ == "__main__":
    sys.exit(main())
