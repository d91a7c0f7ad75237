#!/usr/bin/env python
"""Write the offline demo corpus (Pile-format .jsonl.zst shards built from the Python stdlib).

python tools/make_demo_corpus.py --output-dir demo_out/corpus
"""

import argparse
import sys
import time

from megatron_salt.data.demo_corpus import SUBSETS, build_demo_corpus


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="make_demo_corpus", description=__doc__.split("\n")[1])
    parser.add_argument("--output-dir", required=True, help="directory for NN.jsonl.zst shards")
    parser.add_argument("--num-shards", type=int, default=4, help="shards to write (default 4)")
    parser.add_argument(
        "--subsets",
        nargs="+",
        default=list(SUBSETS),
        choices=SUBSETS,
        help="meta.pile_set_name subsets to generate (default: all)",
    )
    parser.add_argument(
        "--max-docs-per-subset",
        type=int,
        default=None,
        help="cap per subset, for a quick small corpus",
    )
    parser.add_argument(
        "--processes", type=int, default=2, help="child processes rendering pydoc pages"
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        report = build_demo_corpus(
            args.output_dir,
            num_shards=args.num_shards,
            subsets=args.subsets,
            max_docs_per_subset=args.max_docs_per_subset,
            processes=args.processes,
        )
    except (OSError, ValueError, RuntimeError) as err:
        print(f"make_demo_corpus: error: {err}", file=sys.stderr)
        return 2
    summary = report.to_dict()
    width = max(len(name) for name in summary["subsets"])
    for name, row in summary["subsets"].items():
        print(f"{name:<{width}}  {row['docs']:>6} docs  {row['text_bytes'] / 1e6:8.2f} MB")
    total = summary["total"]
    print(
        f"{'total':<{width}}  {total['docs']:>6} docs  {total['text_bytes'] / 1e6:8.2f} MB"
        f" -> {len(report.shards)} shards, {report.compressed_bytes / 1e6:.2f} MB zstd"
        f" in {args.output_dir} ({time.perf_counter() - start:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
