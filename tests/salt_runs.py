"""Helpers shared by the training tests: argument lists, runs on gloo ranks, checkpoints.

SALT runs start from two checkpoints made once per session (the ``checkpoints``
fixture in conftest.py): a small trained teacher and a student's initial weights,
so runs at different TP/PP layouts see the same weights and the same batches.
"""

from __future__ import annotations

import json
from pathlib import Path

from megatron_salt.testing import run_on_ranks

REPO = Path(__file__).resolve().parents[1]
#: The per-step values a resumed (or otherwise equivalent) run must reproduce bitwise.
RESUME_COMPARED = ("lm_loss", "kd_loss", "total_loss", "grad_norm", "learning_rate", "kd_weight")
TEACHER = ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4"]
STUDENT = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4"]


def common_args(data, save: Path, *extra: str) -> list[str]:
    return [
        "--seq-length", "64",
        "--micro-batch-size", "2",
        "--global-batch-size", "4",
        "--lr", "2e-3",
        "--min-lr", "1e-4",
        "--lr-decay-style", "cosine",
        "--data-path", data.prefix,
        "--split", "90,10,0",
        "--tokenizer-type", "SentencePieceTokenizer",
        "--tokenizer-model", data.tokenizer_model,
        "--log-interval", "1",
        "--eval-interval", "1000",
        "--eval-iters", "2",
        "--save", str(save),
        *extra,
    ]  # fmt: skip


def _pretrain(argv: list[str]):
    from megatron_salt.training.arguments import parse_args
    from megatron_salt.training.loop import pretrain

    return pretrain(parse_args(argv))


def pretrain_on(world_size: int, argv: list[str]):
    return run_on_ranks(_pretrain, world_size, argv, timeout=240)[-1]


def records(run_dir: Path, kind: str = "train") -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def student_args(data, checkpoints, save: Path, *extra: str) -> list[str]:
    """The student, starting from the shared initial weights (a baseline run)."""
    return [
        *STUDENT,
        *common_args(data, save, "--make-vocab-size-divisible-by", "96"),
        "--load", str(checkpoints[1]), "--finetune",
        *extra,
    ]  # fmt: skip


def salt_args(data, checkpoints, save: Path, *extra: str) -> list[str]:
    teacher = str(checkpoints[0])
    kd = ["--kd-teacher-load", teacher, "--kd-alpha", "0.6", "--kd-temperature", "2.0"]
    return student_args(data, checkpoints, save, *kd, *extra)


def load_reference_slm(checkpoint: str):
    """The SLM of ``checkpoint`` and its ModelConfig in this one-rank process (TP=1), for the
    tests' float64 references of its scores."""
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    from megatron_salt.checkpoint_dir import resolve_checkpoint
    from megatron_salt.config import ModelConfig, ParallelConfig, PrecisionConfig
    from megatron_salt.teacher import load_frozen_gpt

    parallel_state.initialize_model_parallel(1, 1)
    model_parallel_cuda_manual_seed(0)
    ckpt = resolve_checkpoint(checkpoint)
    cfg = ModelConfig.load(ckpt)
    return load_frozen_gpt(ckpt, cfg, ParallelConfig(), PrecisionConfig()), cfg
