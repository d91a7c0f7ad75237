"""Build Megatron-Core GPT models (student and teacher) from a :class:`ModelConfig`."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from megatron.core.models.gpt.gpt_model import GPTModel
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_salt.compat import have_fused_softmax_kernels, have_transformer_engine
from megatron_salt.config import ModelConfig, ParallelConfig, PrecisionConfig
from megatron_salt.layers import parallel_residual_spec

logger = logging.getLogger(__name__)


class SaltGPTModel(GPTModel):
    """A GPTModel whose last stage hands back vocab-parallel logits ``[s, b, v/tp]``.

    SALT needs the student's logits twice (cross-entropy against the labels and
    KL against the teacher) and the teacher's logits once. Stock GPTModel either
    consumes them in its own cross-entropy (which, for fp32 logits, works in
    place) or returns them batch-first through a full-vocab transpose copy.
    ``compute_language_model_loss`` is the seam between the output layer and the
    loss, so overriding it hands the logits over untouched, in Megatron's layout.
    Call the model with ``labels`` (any tensor) to take that path.
    """

    def compute_language_model_loss(
        self, labels: torch.Tensor, logits: torch.Tensor
    ) -> torch.Tensor:
        return logits


def layer_spec(model_cfg: ModelConfig, use_te: bool | None = None) -> ModuleSpec:
    """Transformer Engine layers when TE imports (required for FP8), else Megatron-Core's."""
    from megatron.core.models.gpt import gpt_layer_specs

    if use_te is None:
        use_te = have_transformer_engine()
    if use_te:
        spec = gpt_layer_specs.get_gpt_layer_with_transformer_engine_spec()
    else:
        spec = gpt_layer_specs.get_gpt_layer_local_spec(normalization=model_cfg.normalization)
    if model_cfg.use_parallel_residual:
        spec = parallel_residual_spec(spec)
    return spec


def transformer_config(
    model_cfg: ModelConfig,
    parallel: ParallelConfig,
    precision: PrecisionConfig,
) -> TransformerConfig:
    """Megatron-Core TransformerConfig for one model (student or teacher)."""
    on_gpu = torch.cuda.is_available()
    kwargs = {}
    if model_cfg.swiglu:
        kwargs.update(gated_linear_unit=True, activation_func=F.silu)
    if precision.fp8_format:
        kwargs.update(fp8=precision.fp8_format, fp8_recipe=precision.fp8_recipe)
    return TransformerConfig(
        num_layers=model_cfg.num_layers,
        hidden_size=model_cfg.hidden_size,
        ffn_hidden_size=model_cfg.ffn_hidden_size,
        num_attention_heads=model_cfg.num_attention_heads,
        num_query_groups=model_cfg.num_query_groups,
        hidden_dropout=model_cfg.hidden_dropout,
        attention_dropout=model_cfg.attention_dropout,
        init_method_std=model_cfg.init_method_std,
        normalization=model_cfg.normalization,
        layernorm_epsilon=model_cfg.norm_epsilon,
        add_bias_linear=model_cfg.add_bias_linear,
        add_qkv_bias=model_cfg.add_qkv_bias,
        tensor_model_parallel_size=parallel.tensor_model_parallel_size,
        pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
        # Megatron-Core 0.16's default ("full") warns as deprecated; [] is the same scope.
        cuda_graph_scope=[],
        bf16=precision.bf16,
        params_dtype=precision.params_dtype,
        pipeline_dtype=precision.params_dtype,
        autocast_dtype=precision.params_dtype,
        # Layout-independent initialisation on CPU: the same seed gives the same
        # full weights at any TP size (Megatron splits a CPU master copy).
        use_cpu_initialization=not on_gpu,
        # Fusions that need CUDA kernels (apex / TE) stay off on CPU.
        bias_activation_fusion=on_gpu and not model_cfg.swiglu,
        # apex's CUDA softmax kernels: Megatron's local attention imports them when this is on.
        masked_softmax_fusion=on_gpu and have_fused_softmax_kernels(),
        bias_dropout_fusion=on_gpu,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        # We compute the cross-entropy ourselves (see SaltGPTModel).
        cross_entropy_loss_fusion=False,
        **kwargs,
    )


def build_gpt_model(
    model_cfg: ModelConfig,
    config: TransformerConfig,
    *,
    pre_process: bool,
    post_process: bool,
    pg_collection: ProcessGroupCollection | None = None,
    use_te: bool | None = None,
) -> SaltGPTModel:
    """One pipeline stage of a GPT model; ``pg_collection`` None = Megatron's global groups."""
    tp = config.tensor_model_parallel_size
    model = SaltGPTModel(
        config=config,
        transformer_layer_spec=layer_spec(model_cfg, use_te),
        vocab_size=model_cfg.padded_vocab_size(tp),
        max_sequence_length=model_cfg.max_position_embeddings,
        pre_process=pre_process,
        post_process=post_process,
        parallel_output=True,
        share_embeddings_and_output_weights=not model_cfg.untie_embeddings_and_output_weights,
        position_embedding_type=model_cfg.position_embedding_type,
        rotary_percent=model_cfg.rotary_percent,
        rotary_base=model_cfg.rotary_base,
        rope_scaling=model_cfg.rope_scaling,
        rope_scaling_factor=model_cfg.rope_scaling_factor,
        pg_collection=pg_collection,
    )
    if config.bf16:
        # The local spec's torch norms ignore params_dtype; Megatron-LM casts the whole
        # model (Float16Module). Cast the parameters only, so logits stay bf16.
        model.bfloat16()
    return model
