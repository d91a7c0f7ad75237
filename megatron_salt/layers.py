"""Transformer layers Megatron-Core does not ship, plugged in through its layer-spec seam.

GPT-NeoX (and so every Pythia model) computes each layer as
``x + attn(ln1(x)) + mlp(ln2(x))``: attention and MLP both read the layer's input,
where Megatron-Core's :class:`TransformerLayer` feeds the MLP the attention's output.
:class:`ParallelResidualTransformerLayer` reuses the stock layer's submodules,
parameter names and sharded checkpoint keys; only the order of the two residual
branches differs, so a spec swaps the class and keeps everything else.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_layer import TransformerLayer


class ParallelResidualTransformerLayer(TransformerLayer):
    """A TransformerLayer whose MLP branch reads the layer input, not the attention output.

    With Transformer Engine's spec the two layer norms live inside ``linear_qkv`` and
    ``linear_fc1``; feeding both the layer input keeps the same semantics there too.
    """

    def forward(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        kwargs.pop("dynamic_inference_decode_only", None)
        layer_input = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        # x + dropout(attn(ln1(x))): the stock attention half, residual included.
        attention_and_input, context = self._forward_attention(*args, **kwargs)
        mlp_output_with_bias = self.mlp(
            self._forward_pre_mlp_layernorm(layer_input),
            padding_mask=kwargs.get("padding_mask"),
        )
        # ... + dropout(mlp(ln2(x))), through the stock bias-dropout-add.
        return self._forward_post_mlp(mlp_output_with_bias, attention_and_input), context


def parallel_residual_spec(spec: ModuleSpec) -> ModuleSpec:
    """The same layer spec (submodules, norms, linears) with the parallel-residual layer."""
    if spec.module is not TransformerLayer:
        raise ValueError(f"parallel residual needs a TransformerLayer spec, got {spec.module}")
    return dataclasses.replace(spec, module=ParallelResidualTransformerLayer)
