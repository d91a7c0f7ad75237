"""Dataclass configs shared by training, the teacher and the tools.

:class:`ModelConfig` is the architecture as a checkpoint records it
(``model_config.json``, written by pretrain_salt.py and by import-hf; for
Megatron-LM checkpoints derived from their stored arguments): it is all that is
needed to rebuild a teacher at whatever tensor/pipeline sizes the student run asks for.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from megatron_salt.distill.schedule import kd_weight

MODEL_CONFIG_FILE = "model_config.json"


def pad_vocab_size(vocab_size: int, divisible_by: int, tensor_parallel_size: int) -> int:
    """Megatron's padding: round up to a multiple of ``divisible_by * TP``.

    The padded columns exist so every TP rank holds an equal, aligned vocab shard.
    """
    multiple = divisible_by * tensor_parallel_size
    return int(math.ceil(vocab_size / multiple) * multiple)


# What the weights mean: a checkpoint loads only into a model that agrees on all of these.
ARCHITECTURE_FIELDS = (
    "num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
    "position_embedding_type", "rotary_percent", "rotary_base", "rope_scaling",
    "rope_scaling_factor", "normalization", "norm_epsilon", "swiglu", "add_bias_linear",
    "add_qkv_bias", "use_parallel_residual", "untie_embeddings_and_output_weights",
)  # fmt: skip


@dataclass
class ModelConfig:
    """GPT architecture: everything needed to rebuild the model from a checkpoint."""

    num_layers: int
    hidden_size: int
    num_attention_heads: int
    seq_length: int
    vocab_size: int  # the tokenizer's true vocab size
    ffn_hidden_size: int | None = None
    num_query_groups: int | None = None
    max_position_embeddings: int | None = None
    make_vocab_size_divisible_by: int = 128
    position_embedding_type: str = "rope"
    rotary_base: int | float = 10000
    rotary_percent: float = 1.0
    # Llama 3.x frequency scaling (Megatron-Core's, with its fixed low/high frequency
    # factors 1 and 4 and an original context of 8192 tokens).
    rope_scaling: bool = False
    rope_scaling_factor: float = 8.0
    normalization: str = "LayerNorm"
    norm_epsilon: float = 1e-5
    swiglu: bool = False
    add_bias_linear: bool = True
    add_qkv_bias: bool = False  # q/k/v biases alone (Qwen2), when add_bias_linear is off
    # GPT-NeoX/Pythia: x + attn(ln1(x)) + mlp(ln2(x)) instead of two sequential residuals.
    use_parallel_residual: bool = False
    untie_embeddings_and_output_weights: bool = False
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    init_method_std: float = 0.02
    # Set in saved checkpoints: the padded vocab the weights were trained with.
    # A teacher is rebuilt with exactly this size at any TP (it divides by any
    # TP that divides Megatron's 128*TP padding), so its checkpoint always loads.
    trained_padded_vocab_size: int | None = None

    def __post_init__(self) -> None:
        if self.ffn_hidden_size is None:
            self.ffn_hidden_size = 4 * self.hidden_size
        if self.max_position_embeddings is None:
            self.max_position_embeddings = self.seq_length

    def padded_vocab_size(self, tensor_parallel_size: int) -> int:
        if self.trained_padded_vocab_size is None:
            return pad_vocab_size(
                self.vocab_size, self.make_vocab_size_divisible_by, tensor_parallel_size
            )
        if self.trained_padded_vocab_size % tensor_parallel_size:
            raise ValueError(
                f"the checkpoint's vocab is padded to {self.trained_padded_vocab_size} rows, "
                f"which TP={tensor_parallel_size} cannot split evenly"
            )
        return self.trained_padded_vocab_size

    def num_parameters(self, include_embeddings: bool = True) -> int:
        """Parameter count (unpadded vocab), for logs and the memory estimator."""
        h, f, layers = self.hidden_size, self.ffn_hidden_size, self.num_layers
        groups = self.num_query_groups or self.num_attention_heads
        kv = 2 * h * groups // self.num_attention_heads
        bias = 1 if self.add_bias_linear else 0
        qkv_bias = 1 if (self.add_bias_linear or self.add_qkv_bias) else 0
        attn = h * (h + kv) + qkv_bias * (h + kv) + h * h + bias * h
        mlp_in = (2 if self.swiglu else 1) * f
        mlp = h * mlp_in + bias * mlp_in + f * h + bias * h
        norm = 2 * h if self.normalization == "LayerNorm" else h  # weight (+ bias)
        total = layers * (attn + mlp + 2 * norm) + norm
        if include_embeddings:
            total += self.vocab_size * h
            if self.untie_embeddings_and_output_weights:
                total += self.vocab_size * h
            if self.position_embedding_type == "learned_absolute":
                total += self.max_position_embeddings * h
        return total

    def architecture_differences(self, other: ModelConfig) -> list[str]:
        """``field=ours vs other`` for every architecture field the two disagree on."""
        diffs = [
            f"{name}={getattr(self, name)!r} vs {getattr(other, name)!r}"
            for name in ARCHITECTURE_FIELDS
            if getattr(self, name) != getattr(other, name)
        ]
        if self.position_embedding_type == other.position_embedding_type == "learned_absolute":
            if self.max_position_embeddings != other.max_position_embeddings:
                diffs.append(
                    f"max_position_embeddings={self.max_position_embeddings} vs "
                    f"{other.max_position_embeddings}"
                )
        return diffs

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}")
        return cls(**values)

    def save(self, directory: str | Path) -> None:
        path = Path(directory) / MODEL_CONFIG_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> ModelConfig:
        path = Path(directory) / MODEL_CONFIG_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no model config (not a pretrain_salt.py checkpoint?)")
        return cls.from_dict(json.loads(path.read_text()))


@dataclass
class ParallelConfig:
    """How one model is laid out over ranks."""

    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1


@dataclass
class PrecisionConfig:
    bf16: bool = False
    fp8_format: str | None = None  # "e4m3" | "hybrid" (Transformer Engine only)
    fp8_recipe: str = "delayed"

    @property
    def params_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.bf16 else torch.float32


@dataclass
class KDConfig:
    """SALT's knowledge-distillation phase.

    ``alpha`` is the paper's w in ``(1-w)*CE + w*KD``; ``iters`` is n_KD, after
    which the teacher is released and training is plain next-token prediction.
    """

    teacher_load: str | None = None
    teacher_tensor_model_parallel_size: int | None = None  # None: the student's
    teacher_pipeline_model_parallel_size: int = 1
    alpha: float = 0.5
    temperature: float = 1.0
    top_k: int | None = None
    iters: int = 0
    schedule: str = "constant"
    data_path: list[str] | None = None
    data_selection: str | None = None
    data_selection_by: str = "global"  # or "subset": the rule within each Pile subset

    @property
    def enabled(self) -> bool:
        """A teacher runs for the first ``iters`` steps (with ``alpha == 0`` it is only
        measured: its loss and agreement are logged, the student trains on CE alone)."""
        return self.teacher_load is not None and self.iters > 0

    def in_phase(self, step: int) -> bool:
        """Is the 0-based optimizer step ``step`` one of the KD phase's?"""
        return self.enabled and step < self.iters

    def weight(self, step: int) -> float:
        """``w`` of the loss at ``step``: the schedule's during the KD phase, 0 after it."""
        if not self.in_phase(step):
            return 0.0
        return kd_weight(step, alpha=self.alpha, kd_iters=self.iters, schedule=self.schedule)
