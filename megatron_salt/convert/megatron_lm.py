"""Megatron-LM ``torch_dist`` checkpoints: their stored arguments -> :class:`ModelConfig`.

Megatron-LM's ``pretrain_gpt.py`` (``megatron/training/checkpointing.py``) saves through
the same ``dist_checkpointing`` as we do: ``{root}/latest_checkpointed_iteration.txt``,
``{root}/iter_NNNNNNN/`` (or ``release``), the model's ``sharded_state_dict()`` under
``model``, and the run's ``argparse.Namespace`` under ``args`` in the common state
(``common.pt``). The sharded tensor keys are the GPTModel's own, for Transformer
Engine and local layers alike, so once the arguments are mapped the weights load into
our GPTModel at any TP/PP. Arguments describing something our GPTModel does not
build are refused, naming the argument.
"""

from __future__ import annotations

from argparse import Namespace
from pathlib import Path
from typing import Any

from megatron_salt.config import ModelConfig
from megatron_salt.convert.errors import ConversionError

# Arguments of features we do not build: any true-ish value other than this is refused.
_MUST_BE = (
    ("num_experts", None),
    ("multi_latent_attention", False),
    ("qk_layernorm", False),
    ("mtp_num_layers", None),
    ("apply_layernorm_1p", False),
    ("squared_relu", False),
    ("openai_gelu", False),
    ("onnx_safe", None),
    ("rotary_interleaved", False),
    ("apply_residual_connection_post_layernorm", False),
    ("apply_query_key_layer_scaling", False),
    ("virtual_pipeline_model_parallel_size", None),
    ("num_layers_per_virtual_pipeline_stage", None),
    ("heterogeneous_layers_config_path", None),
    ("spec", None),
    ("window_size", None),
    ("experimental_attention_variant", None),
)


def read_megatron_lm_args(ckpt_dir: Path) -> Namespace:
    """The ``args`` Namespace Megatron-LM stores in a checkpoint's common state."""
    from megatron.core import dist_checkpointing
    from megatron.core.safe_globals import register_safe_globals

    register_safe_globals()  # Namespace and Megatron's enums, for torch.load(weights_only)
    try:
        common = dist_checkpointing.load_common_state_dict(str(ckpt_dir))
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same failure
        raise ConversionError(f"{ckpt_dir}: cannot read the common state ({err})") from None
    args = common.get("args") if isinstance(common, dict) else None
    if args is None:
        raise ConversionError(f"{ckpt_dir}: no model_config.json and no Megatron-LM 'args'")
    return args


def _true_vocab_size(args: Namespace, source: str) -> int:
    """The tokenizer's own size: Megatron-LM stores only the padded one."""
    if getattr(args, "vocab_size", None):
        return int(args.vocab_size)
    from megatron_salt.tokenizer import TOKENIZER_TYPES, TokenizerError, build_tokenizer

    kind, model = getattr(args, "tokenizer_type", None), getattr(args, "tokenizer_model", None)
    if kind not in TOKENIZER_TYPES:
        raise ConversionError(
            f"{source}: tokenizer_type={kind!r}: the true vocab size cannot be read "
            f"(supported: {', '.join(TOKENIZER_TYPES)})"
        )
    try:
        # Megatron-LM's SentencePieceTokenizer appends its special ids after the model's;
        # the model's ids are the same, so the KD vocabulary is the model's.
        return build_tokenizer(kind, model).vocab_size
    except TokenizerError as err:
        raise ConversionError(
            f"{source}: tokenizer_model={model!r}: needed for the true vocab size ({err})"
        ) from None


def model_config_from_args(args: Namespace, source: str) -> ModelConfig:
    """Map Megatron-LM arguments to a ModelConfig, or raise naming the argument."""

    def get(name: str, default: Any = None) -> Any:
        return getattr(args, name, default)

    for name, fine in _MUST_BE:
        value = get(name, fine)
        if value and value != fine:
            raise ConversionError(f"{source}: argument {name}={value!r} is not supported")
    if get("transformer_impl", "transformer_engine") not in ("transformer_engine", "local"):
        raise ConversionError(f"{source}: argument transformer_impl={get('transformer_impl')!r}")
    position = get("position_embedding_type", "learned_absolute")
    if position not in ("rope", "learned_absolute"):
        raise ConversionError(f"{source}: argument position_embedding_type={position!r} is not "
                              "supported (rope, learned_absolute)")  # fmt: skip
    normalization = get("normalization", "LayerNorm")
    if normalization not in ("LayerNorm", "RMSNorm"):
        raise ConversionError(
            f"{source}: argument normalization={normalization!r} is not supported"
        )
    hidden, heads = int(args.hidden_size), int(args.num_attention_heads)
    kv_channels = get("kv_channels")
    if kv_channels is not None and int(kv_channels) != hidden // heads:
        raise ConversionError(
            f"{source}: argument kv_channels={kv_channels} (only hidden_size/num_attention_heads)"
        )
    groups = get("num_query_groups") if get("group_query_attention", False) else None
    padded = get("padded_vocab_size")
    if padded is None:
        raise ConversionError(f"{source}: argument padded_vocab_size is missing")
    return ModelConfig(
        num_layers=int(args.num_layers),
        hidden_size=hidden,
        num_attention_heads=heads,
        ffn_hidden_size=get("ffn_hidden_size"),
        num_query_groups=groups if groups != heads else None,
        seq_length=int(args.seq_length),
        max_position_embeddings=get("max_position_embeddings"),
        vocab_size=_true_vocab_size(args, source),
        make_vocab_size_divisible_by=int(get("make_vocab_size_divisible_by", 128)),
        position_embedding_type=position,
        rotary_base=get("rotary_base", 10000),
        rotary_percent=float(get("rotary_percent", 1.0)),
        rope_scaling=bool(get("use_rope_scaling", False)),
        rope_scaling_factor=float(get("rope_scaling_factor", 8.0)),
        normalization=normalization,
        norm_epsilon=float(get("norm_epsilon", 1e-5)),
        swiglu=bool(get("swiglu", False)),
        add_bias_linear=bool(get("add_bias_linear", True)),
        add_qkv_bias=bool(get("add_qkv_bias", False)),
        untie_embeddings_and_output_weights=bool(get("untie_embeddings_and_output_weights", False)),
        hidden_dropout=float(get("hidden_dropout", 0.1)),
        attention_dropout=float(get("attention_dropout", 0.1)),
        init_method_std=float(get("init_method_std", 0.02)),
        trained_padded_vocab_size=int(padded),
    )


def model_config_from_megatron_lm(ckpt_dir: Path) -> ModelConfig:
    return model_config_from_args(read_megatron_lm_args(ckpt_dir), source=str(ckpt_dir))
