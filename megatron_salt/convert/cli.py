"""Command line of ``tools/convert_checkpoint.py``: ``import-hf`` and ``export-hf``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

PROG = "convert_checkpoint.py"


class _Parser(argparse.ArgumentParser):
    """One-line usage errors (no usage dump), exit status 2 like argparse."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="HuggingFace checkpoints in and out of Megatron-Core dist_checkpointing.",
        allow_abbrev=False,
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    imp = commands.add_parser(
        "import-hf",
        help="a HF model directory -> a checkpoint --kd-teacher-load, --load --finetune and "
        "score_data.py --load accept at any TP/PP",
        allow_abbrev=False,
    )
    imp.add_argument("--hf-dir", required=True, help="config.json + safetensors (+ tokenizer)")
    imp.add_argument("--save", required=True, help="new checkpoint root (must not exist)")
    imp.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    imp.add_argument(
        "--seq-length",
        type=int,
        default=None,
        help="recorded sequence length, score_data.py's default window; default: "
        "max_position_embeddings, at most 4096",
    )
    exp = commands.add_parser(
        "export-hf",
        help="a checkpoint -> config.json, safetensors and tokenizer files for "
        "AutoModelForCausalLM / AutoTokenizer",
        allow_abbrev=False,
    )
    exp.add_argument("--load", required=True, help="checkpoint root or iter_N directory")
    exp.add_argument("--iteration", type=int, default=None, help="default: the latest")
    exp.add_argument("--hf-dir", required=True, help="output directory (must not exist)")
    exp.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    exp.add_argument("--max-shard-size-gb", type=float, default=5.0)
    exp.add_argument("--tokenizer-type", default=None, help="default: the checkpoint's")
    exp.add_argument("--tokenizer-model", default=None, help="default: the checkpoint's")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from megatron_salt.checkpoint_dir import CheckpointError
    from megatron_salt.compat import filter_upstream_noise
    from megatron_salt.convert.errors import ConversionError
    from megatron_salt.convert.hf import export_hf, import_hf
    from megatron_salt.tokenizer import TokenizerError

    filter_upstream_noise()
    try:
        if args.command == "import-hf":
            cfg = import_hf(
                args.hf_dir, args.save, dtype=args.dtype, max_seq_length=args.seq_length
            )
            print(
                f"{PROG}: wrote {args.save} ({cfg.num_parameters():,} parameters, "
                f"vocab {cfg.vocab_size} padded to {cfg.trained_padded_vocab_size})"
            )
        else:
            if (args.tokenizer_type is None) != (args.tokenizer_model is None):
                raise ConversionError("--tokenizer-type and --tokenizer-model go together")
            tokenizer = (args.tokenizer_type, args.tokenizer_model) if args.tokenizer_type else None
            arch = export_hf(
                args.load,
                args.hf_dir,
                iteration=args.iteration,
                dtype=args.dtype,
                tokenizer=tokenizer,
                max_shard_bytes=int(args.max_shard_size_gb * 2**30),
            )
            print(f"{PROG}: wrote {args.hf_dir} ({arch})")
    except (ConversionError, CheckpointError, TokenizerError, FileNotFoundError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    return 0
