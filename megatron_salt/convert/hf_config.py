"""HuggingFace ``config.json`` <-> :class:`ModelConfig`.

The JSON is read as a plain dict, so both spellings in circulation work: transformers
4.x (``rope_theta``, ``rotary_pct``, ``rotary_emb_base``, ``rope_scaling``), which hub
checkpoints carry, and 5.x (``rope_parameters``). Whatever Megatron-Core's GPTModel
cannot compute exactly is refused with one line naming the config field; nothing is
silently approximated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from megatron_salt.config import ModelConfig
from megatron_salt.convert.errors import ConversionError

LLAMA_FAMILY = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")
GPT_NEOX = "GPTNeoXForCausalLM"
SUPPORTED_ARCHITECTURES = (*LLAMA_FAMILY, GPT_NEOX)

# Megatron-Core's llama3 rope scaling hard-codes these (RotaryEmbedding._apply_scaling).
LLAMA3_FIXED = {"low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}  # fmt: skip


# config.json records how far positions may go (131072 for Llama 3.2), not the length the
# model trained on; seq_length is scoring's default window, so it is capped unless asked.
DEFAULT_MAX_SEQ_LENGTH = 4096


@dataclass(frozen=True)
class HFModel:
    """What the converter needs to know about one HuggingFace checkpoint."""

    architecture: str
    model_cfg: ModelConfig

    @property
    def is_gpt_neox(self) -> bool:
        return self.architecture == GPT_NEOX


def _refuse(source: str, field: str, value: Any, why: str) -> ConversionError:
    return ConversionError(f"{source}: {field}={value!r}: {why}")


def _rope(cfg: dict[str, Any], source: str) -> tuple[float, float, dict[str, Any] | None]:
    """(theta, partial rotary fraction, scaling dict or None) from 4.x or 5.x keys."""
    params = cfg.get("rope_parameters")
    if params is not None and not isinstance(params, dict):
        raise _refuse(source, "rope_parameters", params, "expected an object")
    params = params or {}
    if params and not ({"rope_type", "rope_theta", "type"} & set(params)):
        raise _refuse(
            source, "rope_parameters", sorted(params), "per-layer-type rope is not supported"
        )
    theta = params.get("rope_theta", cfg.get("rope_theta", cfg.get("rotary_emb_base", 10000.0)))
    partial = params.get(
        "partial_rotary_factor", cfg.get("partial_rotary_factor", cfg.get("rotary_pct", 1.0))
    )
    rope_type = params.get("rope_type", params.get("type"))
    scaling = None
    if rope_type not in (None, "default"):
        scaling = params
    elif cfg.get("rope_scaling"):
        scaling = cfg["rope_scaling"]
        rope_type = scaling.get("rope_type", scaling.get("type"))
        if rope_type == "default":
            scaling = None
    return float(theta), float(partial), scaling


def _rope_scaling(scaling: dict[str, Any] | None, source: str) -> tuple[bool, float]:
    if scaling is None:
        return False, 8.0
    field = "rope_scaling"
    rope_type = scaling.get("rope_type", scaling.get("type"))
    if rope_type != "llama3":
        raise _refuse(
            source, f"{field}.rope_type", rope_type, "only 'llama3' rope scaling is supported"
        )
    for key, fixed in LLAMA3_FIXED.items():
        if key in scaling and float(scaling[key]) != fixed:
            raise _refuse(
                source, f"{field}.{key}", scaling[key],
                f"Megatron-Core's llama3 scaling fixes it at {fixed:g}",
            )  # fmt: skip
    return True, float(scaling.get("factor", 8.0))


def _int_if_integral(value: float) -> int | float:
    return int(value) if float(value).is_integer() else float(value)


def model_config_from_hf(
    cfg: dict[str, Any],
    *,
    source: str,
    tokenizer_vocab_size: int | None,
    max_seq_length: int | None = None,
) -> HFModel:
    """Map a HF config dict to a ModelConfig, or raise :class:`ConversionError`.

    ``tokenizer_vocab_size``: the ids the tokenizer produces (its true vocabulary);
    the embedding's extra rows become the padded vocabulary. ``max_seq_length`` caps
    the recorded ``seq_length`` (the default scoring window; default
    ``DEFAULT_MAX_SEQ_LENGTH``), not the positions.
    """
    archs = cfg.get("architectures") or []
    arch = archs[0] if archs else None
    if arch not in SUPPORTED_ARCHITECTURES or len(archs) != 1:
        raise _refuse(
            source, "architectures", archs, f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    for field in ("num_experts", "num_local_experts", "n_routed_experts", "moe_intermediate_size"):
        if cfg.get(field):
            raise _refuse(source, field, cfg[field], "mixture-of-experts models are not supported")
    for field in ("qk_norm", "use_qk_norm", "qk_layernorm"):
        if cfg.get(field):
            raise _refuse(source, field, cfg[field], "qk-norm is not supported")
    if cfg.get("sliding_window") is not None and cfg.get("use_sliding_window", True):
        raise _refuse(
            source,
            "sliding_window",
            cfg["sliding_window"],
            "sliding-window attention is not supported",
        )
    if cfg.get("use_sliding_window"):
        raise _refuse(
            source, "use_sliding_window", True, "sliding-window attention is not supported"
        )

    hidden = int(cfg["hidden_size"])
    heads = int(cfg["num_attention_heads"])
    if hidden % heads:
        raise _refuse(source, "num_attention_heads", heads, f"does not divide hidden_size {hidden}")
    head_dim = cfg.get("head_dim")
    if head_dim is not None and int(head_dim) != hidden // heads:
        raise _refuse(source, "head_dim", head_dim, f"only hidden_size/num_attention_heads = "
                      f"{hidden // heads} is supported")  # fmt: skip
    rows = int(cfg["vocab_size"])
    vocab = tokenizer_vocab_size if tokenizer_vocab_size is not None else rows
    if vocab > rows:
        raise _refuse(
            source,
            "vocab_size",
            rows,
            f"the tokenizer has {vocab} ids, more than the embedding rows",
        )
    theta, partial, scaling = _rope(cfg, source)
    positions = int(cfg.get("max_position_embeddings", 2048))
    seq_length = min(positions, max_seq_length or DEFAULT_MAX_SEQ_LENGTH)
    common: dict[str, Any] = dict(
        num_layers=int(cfg["num_hidden_layers"]),
        hidden_size=hidden,
        num_attention_heads=heads,
        ffn_hidden_size=int(cfg["intermediate_size"]),
        seq_length=seq_length,
        max_position_embeddings=positions,
        vocab_size=vocab,
        trained_padded_vocab_size=rows,
        position_embedding_type="rope",
        rotary_base=_int_if_integral(theta),
        rotary_percent=partial,
        attention_dropout=float(cfg.get("attention_dropout", 0.0) or 0.0),
        init_method_std=float(cfg.get("initializer_range", 0.02)),
    )
    if not 0 < partial <= 1 or not math.isfinite(partial):
        raise _refuse(source, "partial_rotary_factor", partial, "must be in (0, 1]")

    if arch == GPT_NEOX:
        return HFModel(arch, _gpt_neox(cfg, source, common, scaling))
    return HFModel(arch, _llama_family(arch, cfg, source, common, scaling))


def _llama_family(
    arch: str, cfg: dict[str, Any], source: str, common: dict[str, Any], scaling: Any
) -> ModelConfig:
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise _refuse(source, "hidden_act", act, "only 'silu' (SwiGLU) is supported")
    if common["rotary_percent"] != 1.0:
        raise _refuse(source, "partial_rotary_factor", common["rotary_percent"],
                      f"{arch} rotates whole heads")  # fmt: skip
    kv_heads = int(cfg.get("num_key_value_heads") or common["num_attention_heads"])
    if common["num_attention_heads"] % kv_heads:
        raise _refuse(source, "num_key_value_heads", kv_heads, "must divide num_attention_heads")
    attention_bias = bool(cfg.get("attention_bias", False))
    mlp_bias = bool(cfg.get("mlp_bias", False))
    if attention_bias != mlp_bias:
        field = "attention_bias" if attention_bias else "mlp_bias"
        raise _refuse(source, field, True, "biases on attention or MLP alone are not supported "
                      "(Megatron's add_bias_linear covers both)")  # fmt: skip
    rope_scaling, factor = _rope_scaling(scaling, source)
    return ModelConfig(
        **common,
        num_query_groups=kv_heads if kv_heads != common["num_attention_heads"] else None,
        normalization="RMSNorm",
        norm_epsilon=float(cfg.get("rms_norm_eps", 1e-6)),
        swiglu=True,
        add_bias_linear=attention_bias,
        add_qkv_bias=arch == "Qwen2ForCausalLM",
        rope_scaling=rope_scaling,
        rope_scaling_factor=factor,
        untie_embeddings_and_output_weights=not cfg.get("tie_word_embeddings", False),
        hidden_dropout=0.0,
    )


def _gpt_neox(
    cfg: dict[str, Any], source: str, common: dict[str, Any], scaling: Any
) -> ModelConfig:
    act = cfg.get("hidden_act", "gelu")
    if act != "gelu":
        raise _refuse(source, "hidden_act", act, "only 'gelu' (exact) is supported for GPT-NeoX")
    if scaling is not None:
        raise _refuse(source, "rope_scaling", scaling, "not supported for GPT-NeoX")
    if not cfg.get("attention_bias", True):
        raise _refuse(source, "attention_bias", False, "GPT-NeoX's MLP has biases; both or none")
    return ModelConfig(
        **common,
        normalization="LayerNorm",
        norm_epsilon=float(cfg.get("layer_norm_eps", 1e-5)),
        swiglu=False,
        add_bias_linear=True,
        use_parallel_residual=bool(cfg.get("use_parallel_residual", True)),
        untie_embeddings_and_output_weights=not cfg.get("tie_word_embeddings", False),
        hidden_dropout=float(cfg.get("hidden_dropout", 0.0) or 0.0),
    )


# --- export ------------------------------------------------------------------------


def hf_architecture_for(model_cfg: ModelConfig) -> str:
    """The HF class that computes exactly what this ModelConfig computes, or raise."""
    c = model_cfg
    if c.position_embedding_type != "rope":
        raise ConversionError(
            f"position_embedding_type={c.position_embedding_type!r}: only rope models export"
        )
    if c.swiglu:
        if c.normalization != "RMSNorm":
            raise ConversionError(
                f"normalization={c.normalization!r} with swiglu: Llama/Qwen2 need RMSNorm"
            )
        if c.use_parallel_residual:
            raise ConversionError("use_parallel_residual=True with swiglu has no HF equivalent")
        if c.rotary_percent != 1.0:
            raise ConversionError(
                f"rotary_percent={c.rotary_percent} with swiglu: Llama/Qwen2 rotate whole heads"
            )
        return (
            "Qwen2ForCausalLM" if (c.add_qkv_bias and not c.add_bias_linear) else "LlamaForCausalLM"
        )
    if c.normalization != "LayerNorm":
        raise ConversionError(f"normalization={c.normalization!r} without swiglu: GPT-NeoX needs "
                              "LayerNorm")  # fmt: skip
    if not c.add_bias_linear:
        raise ConversionError("add_bias_linear=False without swiglu: GPT-NeoX has biases")
    if c.num_query_groups not in (None, c.num_attention_heads):
        raise ConversionError(f"num_query_groups={c.num_query_groups}: GPT-NeoX has no GQA")
    if c.rope_scaling:
        raise ConversionError("rope_scaling=True: GPT-NeoX export supports no rope scaling")
    return GPT_NEOX


def hf_config_kwargs(model_cfg: ModelConfig, architecture: str, padded_vocab: int) -> dict:
    """Keyword arguments of the transformers config class (4.x names, which 5.x maps)."""
    c = model_cfg
    common = dict(
        architectures=[architecture],
        vocab_size=padded_vocab,
        hidden_size=c.hidden_size,
        intermediate_size=c.ffn_hidden_size,
        num_hidden_layers=c.num_layers,
        num_attention_heads=c.num_attention_heads,
        max_position_embeddings=c.max_position_embeddings,
        initializer_range=c.init_method_std,
        tie_word_embeddings=not c.untie_embeddings_and_output_weights,
        attention_dropout=0.0,
    )
    if architecture == GPT_NEOX:
        return dict(
            common,
            hidden_act="gelu",
            rotary_pct=c.rotary_percent,
            rotary_emb_base=c.rotary_base,
            layer_norm_eps=c.norm_epsilon,
            use_parallel_residual=c.use_parallel_residual,
            attention_bias=True,
            hidden_dropout=0.0,
        )
    kwargs = dict(
        common,
        hidden_act="silu",
        num_key_value_heads=c.num_query_groups or c.num_attention_heads,
        rms_norm_eps=c.norm_epsilon,
        rope_theta=float(c.rotary_base),
    )
    if c.rope_scaling:
        kwargs["rope_scaling"] = {"rope_type": "llama3", "factor": c.rope_scaling_factor,
                                  **LLAMA3_FIXED}  # fmt: skip
    if architecture == "LlamaForCausalLM":
        kwargs.update(attention_bias=c.add_bias_linear, mlp_bias=c.add_bias_linear)
    return kwargs
