#!/usr/bin/env python
"""Train a sentencepiece model on Pile-format shards (.jsonl / .jsonl.zst / .jsonl.gz).

    python tools/train_tokenizer.py --input demo_out/corpus \\
        --model-prefix demo_out/tokenizer/spm --vocab-size 4096

Writes {model-prefix}.model and .vocab; ids: unk=0, bos=1, eos=2 (the EOD), pad=3.
"""

import argparse
import sys
import time

from megatron_salt.data.pile import BadInputError, InputError
from megatron_salt.data.tokenizer_training import TokenizerTrainingConfig, train_sentencepiece


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="train_tokenizer", description=__doc__.split("\n")[1])
    parser.add_argument(
        "--input", nargs="+", required=True, help="shard files, directories or globs"
    )
    parser.add_argument("--model-prefix", required=True, help="writes PREFIX.model, PREFIX.vocab")
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--model-type", choices=("unigram", "bpe"), default="unigram")
    parser.add_argument("--json-key", default="text", help="JSON key holding the text")
    parser.add_argument(
        "--max-sentences",
        type=int,
        default=100_000,
        help="train on at most this many lines (every k-th line of the input)",
    )
    parser.add_argument("--num-threads", type=int, default=2)
    args = parser.parse_args(argv)
    config = TokenizerTrainingConfig(
        inputs=args.input,
        model_prefix=args.model_prefix,
        vocab_size=args.vocab_size,
        model_type=args.model_type,
        json_key=args.json_key,
        max_sentences=args.max_sentences,
        num_threads=args.num_threads,
    )
    start = time.perf_counter()
    try:
        path = train_sentencepiece(config)
    except (InputError, BadInputError, ValueError, OSError, RuntimeError) as err:
        print(f"train_tokenizer: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path} (vocab {args.vocab_size}, {time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
