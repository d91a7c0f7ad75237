#!/usr/bin/env python
"""Compute budget of the pile_2p8b_1p5b runs, SALT_DS's scoring job included.

    python examples/pile_2p8b_1p5b/estimate_cost.py [--score-tokens N] [--mfu 0.4]

The command lines come from ``train.sh`` (``PRINT_ARGS=1``) like estimate_memory.py's,
so the table follows every knob of config.sh. FLOPs are the usual estimates
(``megatron_salt.flops``): ``6*N*tokens`` for a training run, ``2*N*tokens`` for
forward passes only (the teacher during KD; the teacher scoring the data in
``MODE=score``, one forward token per label). ``N`` counts parameters at the padded
vocabulary (``ModelConfig.num_parameters``).

Tokens scored: ``--score-tokens``, else the ``total.tokens`` of
``DATA_PREFIX.summary.json`` (written by tools/preprocess_pile.py) when it is
readable, else 300e9 (about one Pile train epoch). GPU-hours are FLOPs over an
*assumed* throughput, ``--mfu`` of ``--peak-tflops`` (H100 SXM dense bf16: 989): not
measured here; scoring is a forward pass of a 1.5B model, whose real utilisation you
should measure on a few chunks (score_data.py prints tokens/s) before trusting the hours.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

EXAMPLE_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(EXAMPLE_DIR))

from estimate_memory import GPT_NEOX_VOCAB_SIZE, padded_config, train_sh_args  # noqa: E402

from megatron_salt.flops import approx_forward_flops, approx_training_flops  # noqa: E402
from megatron_salt.selection.cli import build_score_parser  # noqa: E402
from megatron_salt.training.arguments import build_parser, model_config_from_args  # noqa: E402

PILE_TRAIN_TOKENS = 300e9
H100_BF16_DENSE_TFLOPS = 989.0


@dataclass(frozen=True)
class Cost:
    label: str
    parameters: int
    tokens: float
    flops: float


def _parameters(argv: Sequence[str]) -> tuple[int, argparse.Namespace]:
    args = build_parser().parse_args(list(argv))
    args.max_position_embeddings = args.max_position_embeddings or args.seq_length
    cfg = model_config_from_args(args, GPT_NEOX_VOCAB_SIZE)
    return padded_config(cfg, 1).num_parameters(), args


def score_tokens(data_prefix: str) -> tuple[float, str]:
    """Tokens the scoring job reads, and where the number comes from."""
    summary = Path(data_prefix + ".summary.json")
    try:
        return float(json.loads(summary.read_text())["total"]["tokens"]), str(summary)
    except (OSError, ValueError, KeyError, TypeError):
        return PILE_TRAIN_TOKENS, "assumed: about one Pile train epoch"


def example_costs(
    env: dict[str, str] | None = None, tokens: float | None = None
) -> tuple[list[Cost], str]:
    """Teacher pretraining, student, teacher forwards in KD, and scoring, from train.sh;
    and where the number of tokens scored comes from."""
    env = dict(env or {})
    teacher_n, teacher = _parameters(train_sh_args("teacher", env))
    student_n, baseline = _parameters(train_sh_args("baseline", env))
    _, salt = _parameters(train_sh_args("salt_ds", env))
    score = build_score_parser().parse_args(train_sh_args("score", env))
    source = "--score-tokens"
    if tokens is None:
        tokens, source = score_tokens(score.data_path[0])
    per_step = baseline.global_batch_size * baseline.seq_length
    teacher_tokens = teacher.train_iters * teacher.global_batch_size * teacher.seq_length
    student_tokens = baseline.train_iters * per_step
    kd_tokens = salt.kd_iters * per_step
    costs = [
        Cost("teacher 1.5B pretraining", teacher_n, teacher_tokens,
             approx_training_flops(teacher_n, teacher_tokens)),
        Cost("student 2.8B (baseline or SALT)", student_n, student_tokens,
             approx_training_flops(student_n, student_tokens)),
        Cost("teacher forward during KD", teacher_n, kd_tokens,
             approx_forward_flops(teacher_n, kd_tokens)),
        Cost(f"scoring (MODE=score, --score-unit {score.score_unit})", teacher_n, tokens,
             approx_forward_flops(teacher_n, tokens)),
    ]  # fmt: skip
    return costs, source


def markdown_table(costs: Sequence[Cost], gpus: int, mfu: float, peak_tflops: float) -> str:
    student = costs[1].flops
    rate = mfu * peak_tflops * 1e12  # FLOP/s per GPU, assumed
    lines = [
        f"| run | parameters | tokens | FLOPs | vs student | GPU-hours | hours on {gpus} GPUs |",
        "|" + "---|" * 7,
    ]
    for cost in costs:
        gpu_hours = cost.flops / rate / 3600
        lines.append(
            f"| {cost.label} | {cost.parameters:,} | {cost.tokens:.3g} | {cost.flops:.3g} "
            f"| {cost.flops / student:.1%} | {gpu_hours:,.0f} | {gpu_hours / gpus:,.1f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=8)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--score-tokens", type=float, default=None, help="tokens to score")
    parser.add_argument("--mfu", type=float, default=0.4, help="assumed model FLOPs utilisation")
    parser.add_argument("--peak-tflops", type=float, default=H100_BF16_DENSE_TFLOPS)
    args = parser.parse_args(argv)
    env = {"NNODES": str(args.nodes), "GPUS_PER_NODE": str(args.gpus_per_node)}
    try:
        costs, source = example_costs(env, args.score_tokens)
    except (RuntimeError, ValueError) as err:
        print(f"estimate_cost.py: error: {err}", file=sys.stderr)
        return 2
    gpus = args.nodes * args.gpus_per_node
    print(
        f"Compute of the pile_2p8b_1p5b runs: 6*N*tokens (training), 2*N*tokens (forward "
        f"only); tokens scored from {source}. GPU-hours at an assumed {args.mfu:.0%} of "
        f"{args.peak_tflops:g} TFLOP/s per GPU (not measured).\n"
    )
    print(markdown_table(costs, gpus, args.mfu, args.peak_tflops))
    return 0


if __name__ == "__main__":
    sys.exit(main())
