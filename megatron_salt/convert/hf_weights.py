"""Which HuggingFace tensors make each Megatron-Core parameter, and back.

Names on the Megatron side are the parameter names of a TP=1, PP=1 GPTModel built
with the local spec (``decoder.layers.3.self_attention.linear_qkv.weight``); the
checkpoint's sharded keys and any TP/PP split follow from the model itself.

Two layouts differ from HuggingFace's separate projections:

* ``linear_qkv``: per query group ``g``, the group's query heads, then its key head,
  then its value head (``[ng, (np/ng + 2) * hn, h]``). GPT-NeoX's fused
  ``query_key_value`` is already ``[q, k, v]`` per head, which is this layout for
  ``ng == np``, so it maps unchanged.
* ``linear_fc1`` with SwiGLU: ``[gate; up]`` stacked, what Megatron's ``swiglu`` chunks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from megatron_salt.config import ModelConfig

Merge = Callable[[list[torch.Tensor]], torch.Tensor]
Split = Callable[[torch.Tensor], list[torch.Tensor]]


@dataclass(frozen=True)
class TensorMap:
    """One Megatron parameter and the HF tensors it is made of."""

    megatron: str
    hf: tuple[str, ...]
    merge: Merge
    split: Split


def _one(megatron: str, hf: str) -> TensorMap:
    return TensorMap(megatron, (hf,), lambda ts: ts[0], lambda t: [t])


def _qkv(cfg: ModelConfig, megatron: str, q: str, k: str, v: str) -> TensorMap:
    heads = cfg.num_attention_heads
    groups = cfg.num_query_groups or heads
    hn = cfg.hidden_size // heads
    per_group = (heads // groups) * hn

    def merge(ts: list[torch.Tensor]) -> torch.Tensor:
        qt, kt, vt = (t.reshape(groups, -1, *t.shape[1:]) for t in ts)
        return torch.cat([qt, kt, vt], dim=1).reshape(-1, *ts[0].shape[1:])

    def split(t: torch.Tensor) -> list[torch.Tensor]:
        grouped = t.reshape(groups, per_group + 2 * hn, *t.shape[1:])
        qt, kt, vt = torch.split(grouped, [per_group, hn, hn], dim=1)
        return [x.reshape(-1, *t.shape[1:]).contiguous() for x in (qt, kt, vt)]

    return TensorMap(megatron, (q, k, v), merge, split)


def _gate_up(megatron: str, gate: str, up: str) -> TensorMap:
    return TensorMap(
        megatron,
        (gate, up),
        lambda ts: torch.cat(ts, dim=0),
        lambda t: [x.contiguous() for x in torch.chunk(t, 2, dim=0)],
    )


def llama_family_maps(cfg: ModelConfig) -> list[TensorMap]:
    """Llama, Mistral and Qwen2 (``model.layers.N...``, ``lm_head``)."""
    maps = [_one("embedding.word_embeddings.weight", "model.embed_tokens.weight")]
    qkv_bias = cfg.add_bias_linear or cfg.add_qkv_bias
    for i in range(cfg.num_layers):
        m, h = f"decoder.layers.{i}.", f"model.layers.{i}."
        attn = h + "self_attn."
        maps += [
            _one(m + "input_layernorm.weight", h + "input_layernorm.weight"),
            _qkv(cfg, m + "self_attention.linear_qkv.weight",
                 attn + "q_proj.weight", attn + "k_proj.weight", attn + "v_proj.weight"),
            _one(m + "self_attention.linear_proj.weight", attn + "o_proj.weight"),
            _one(m + "pre_mlp_layernorm.weight", h + "post_attention_layernorm.weight"),
            _gate_up(m + "mlp.linear_fc1.weight",
                     h + "mlp.gate_proj.weight", h + "mlp.up_proj.weight"),
            _one(m + "mlp.linear_fc2.weight", h + "mlp.down_proj.weight"),
        ]  # fmt: skip
        if qkv_bias:
            maps.append(
                _qkv(cfg, m + "self_attention.linear_qkv.bias",
                     attn + "q_proj.bias", attn + "k_proj.bias", attn + "v_proj.bias")
            )  # fmt: skip
        if cfg.add_bias_linear:
            maps += [
                _one(m + "self_attention.linear_proj.bias", attn + "o_proj.bias"),
                _gate_up(
                    m + "mlp.linear_fc1.bias", h + "mlp.gate_proj.bias", h + "mlp.up_proj.bias"
                ),
                _one(m + "mlp.linear_fc2.bias", h + "mlp.down_proj.bias"),
            ]
    maps.append(_one("decoder.final_layernorm.weight", "model.norm.weight"))
    if cfg.untie_embeddings_and_output_weights:
        maps.append(_one("output_layer.weight", "lm_head.weight"))
    return maps


def gpt_neox_maps(cfg: ModelConfig) -> list[TensorMap]:
    """GPT-NeoX / Pythia (``gpt_neox.layers.N...``, ``embed_out``)."""
    maps = [_one("embedding.word_embeddings.weight", "gpt_neox.embed_in.weight")]
    pairs = (
        ("input_layernorm", "input_layernorm"),
        ("self_attention.linear_qkv", "attention.query_key_value"),
        ("self_attention.linear_proj", "attention.dense"),
        ("pre_mlp_layernorm", "post_attention_layernorm"),
        ("mlp.linear_fc1", "mlp.dense_h_to_4h"),
        ("mlp.linear_fc2", "mlp.dense_4h_to_h"),
    )
    for i in range(cfg.num_layers):
        for ours, theirs in pairs:
            for kind in ("weight", "bias"):
                maps.append(
                    _one(
                        f"decoder.layers.{i}.{ours}.{kind}", f"gpt_neox.layers.{i}.{theirs}.{kind}"
                    )
                )
    maps += [
        _one("decoder.final_layernorm.weight", "gpt_neox.final_layer_norm.weight"),
        _one("decoder.final_layernorm.bias", "gpt_neox.final_layer_norm.bias"),
    ]
    if cfg.untie_embeddings_and_output_weights:
        maps.append(_one("output_layer.weight", "embed_out.weight"))
    return maps


def tensor_maps(architecture: str, cfg: ModelConfig) -> list[TensorMap]:
    if architecture == "GPTNeoXForCausalLM":
        return gpt_neox_maps(cfg)
    return llama_family_maps(cfg)


# Names some writers use for the same tensor (transformers 5.x calls GPT-NeoX's head lm_head).
HF_ALIASES = {"embed_out.weight": "lm_head.weight"}

# HF tensors that carry no weights (rotary caches, causal-mask buffers of old checkpoints).
IGNORED_HF_SUFFIXES = (".rotary_emb.inv_freq", ".attention.bias", ".attention.masked_bias")
