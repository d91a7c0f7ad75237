"""Model FLOPs of a GPT forward pass (the matmuls; norms and softmax are ignored).

Per layer and token: QKV ``2h(h + 2*kv)``, attention scores and values
``4*s*h`` (causal masking not discounted, as in Megatron-LM's accounting),
output projection ``2h^2``, MLP ``2*h*f*(3 if SwiGLU else 2)``; plus the output
layer ``2*h*V``. A training step costs three forwards (backward = 2x).
"""

from __future__ import annotations

from megatron_salt.config import ModelConfig


def forward_flops_per_token(cfg: ModelConfig, seq_length: int | None = None) -> float:
    s = seq_length or cfg.seq_length
    h, f = cfg.hidden_size, cfg.ffn_hidden_size
    kv = h * (cfg.num_query_groups or cfg.num_attention_heads) // cfg.num_attention_heads
    attention = 2 * h * (h + 2 * kv) + 4 * s * h + 2 * h * h
    mlp = 2 * h * f * (3 if cfg.swiglu else 2)
    return cfg.num_layers * (attention + mlp) + 2 * h * cfg.vocab_size


def salt_ideal_step_ratio(student: ModelConfig, teacher: ModelConfig, seq_length: int) -> float:
    """FLOP-ideal cost of a KD step relative to a baseline step: ``1 + F_t,fwd / F_s,fwd+bwd``."""
    return 1.0 + forward_flops_per_token(teacher, seq_length) / (
        3.0 * forward_flops_per_token(student, seq_length)
    )


def approx_training_flops(num_parameters: float, tokens: float) -> float:
    """``6*N*tokens``: the usual estimate of training compute (forward 2N, backward 4N)."""
    return 6.0 * num_parameters * tokens


def approx_forward_flops(num_parameters: float, tokens: float) -> float:
    """``2*N*tokens``: a forward pass only (a teacher during KD, an SLM scoring data)."""
    return 2.0 * num_parameters * tokens
