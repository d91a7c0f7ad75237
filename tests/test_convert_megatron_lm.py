"""Megatron-LM ``torch_dist`` checkpoints as teacher, SLM and starting point.

The checkpoint is written the way Megatron-LM's ``megatron/training/checkpointing.py``
writes one: a Megatron-Core GPTModel (built here from the same argument names as
``pretrain_gpt.py``'s model provider, local layers) at TP=2, its ``sharded_state_dict``
under ``model`` with Megatron-LM's sharding metadata, the ``args`` Namespace,
``checkpoint_version`` and ``iteration`` in the common state, saved by
``dist_checkpointing.save`` into ``iter_NNNNNNN`` and named by
``latest_checkpointed_iteration.txt``.
"""

from __future__ import annotations

import dataclasses
from argparse import Namespace

import pytest
import torch
from salt_runs import common_args, pretrain_on
from test_convert_hf import teacher_logits

from megatron_salt.testing import RankFailed, run_on_ranks

ITERATION = 10
SEQ = 32


def megatron_lm_args(tokenizer_model: str, **overrides) -> Namespace:
    """A subset of Megatron-LM's arguments, with its names and its default values."""
    values = dict(
        num_layers=2, hidden_size=48, ffn_hidden_size=80, num_attention_heads=4,
        group_query_attention=True, num_query_groups=2, kv_channels=None, seq_length=SEQ,
        max_position_embeddings=SEQ, position_embedding_type="rope", rotary_base=20000,
        rotary_percent=1.0, rotary_interleaved=False, use_rope_scaling=False,
        rope_scaling_factor=8.0, normalization="RMSNorm", norm_epsilon=1e-6, swiglu=True,
        squared_relu=False, openai_gelu=False, add_bias_linear=False, add_qkv_bias=True,
        untie_embeddings_and_output_weights=True, apply_layernorm_1p=False,
        apply_residual_connection_post_layernorm=False, apply_query_key_layer_scaling=False,
        qk_layernorm=False, num_experts=None, multi_latent_attention=False, mtp_num_layers=None,
        spec=None, transformer_impl="local", hidden_dropout=0.0, attention_dropout=0.0,
        init_method_std=0.02, make_vocab_size_divisible_by=128, padded_vocab_size=384,
        tokenizer_type="GPTSentencePieceTokenizer", tokenizer_model=tokenizer_model,
        tensor_model_parallel_size=2, pipeline_model_parallel_size=1, ckpt_format="torch_dist",
        virtual_pipeline_model_parallel_size=None, use_distributed_optimizer=False,
    )  # fmt: skip
    values.update(overrides)
    return Namespace(**values)


def _save_like_megatron_lm(root: str, args: Namespace, tokens: torch.Tensor) -> torch.Tensor:
    """Build, save and run a GPTModel as Megatron-LM would; return its logits [b, s, v]."""
    import os

    import torch.distributed as dist
    import torch.nn.functional as F
    from megatron.core import dist_checkpointing, parallel_state
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed
    from megatron.core.transformer.transformer_config import TransformerConfig

    parallel_state.initialize_model_parallel(args.tensor_model_parallel_size, 1)
    model_parallel_cuda_manual_seed(123)
    config = TransformerConfig(
        num_layers=args.num_layers, hidden_size=args.hidden_size,
        ffn_hidden_size=args.ffn_hidden_size, num_attention_heads=args.num_attention_heads,
        num_query_groups=args.num_query_groups, normalization=args.normalization,
        layernorm_epsilon=args.norm_epsilon, gated_linear_unit=True, activation_func=F.silu,
        add_bias_linear=args.add_bias_linear, add_qkv_bias=args.add_qkv_bias,
        hidden_dropout=0.0, attention_dropout=0.0, bias_activation_fusion=False,
        masked_softmax_fusion=False, bias_dropout_fusion=False, apply_rope_fusion=False,
        gradient_accumulation_fusion=False, use_cpu_initialization=True,
        tensor_model_parallel_size=args.tensor_model_parallel_size, cuda_graph_scope=[],
        init_method_std=0.3,  # large weights: logits far from uniform
    )  # fmt: skip
    model = GPTModel(
        config=config,
        transformer_layer_spec=get_gpt_layer_local_spec(normalization=args.normalization),
        vocab_size=args.padded_vocab_size,
        max_sequence_length=args.max_position_embeddings,
        share_embeddings_and_output_weights=not args.untie_embeddings_and_output_weights,
        position_embedding_type=args.position_embedding_type,
        rotary_base=args.rotary_base,
        parallel_output=False,
    )
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "layernorm" in name:
                param.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                param.normal_(0, 0.3)
    metadata = {"singleton_local_shards": False, "chained_optim_avoid_prefix": True}
    state = {
        "args": args,
        "checkpoint_version": 3.0,
        "iteration": ITERATION,
        "model": model.sharded_state_dict(metadata=metadata),
        "num_floating_point_operations_so_far": 0,
    }
    ckpt = os.path.join(root, f"iter_{ITERATION:07d}")
    if dist.get_rank() == 0:
        os.makedirs(ckpt)
    dist.barrier()
    dist_checkpointing.save(state, ckpt, content_metadata=metadata)
    if dist.get_rank() == 0:
        with open(os.path.join(root, "latest_checkpointed_iteration.txt"), "w") as f:
            f.write(str(ITERATION))
    dist.barrier()
    model.eval()
    positions = torch.arange(tokens.shape[1]).unsqueeze(0).expand(tokens.shape[0], -1)
    with torch.no_grad():
        return model(tokens, positions, None)  # [b, s, v], gathered (parallel_output=False)


def _teacher_logits(root: str, tp: int, pp: int, tokens: torch.Tensor):
    return teacher_logits([root], tp, pp, tokens)[0]


@pytest.fixture(scope="module")
def megatron_lm_checkpoint(tiny_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("megatron_lm") / "ckpt"
    root.mkdir()
    torch.manual_seed(0)
    tokens = torch.randint(0, tiny_data.vocab_size, (2, SEQ))
    args = megatron_lm_args(tiny_data.tokenizer_model)
    logits = run_on_ranks(_save_like_megatron_lm, 2, str(root), args, tokens)[0]
    return root, tokens, logits


def test_stored_arguments_become_the_model_config(tiny_data, megatron_lm_checkpoint):
    from megatron_salt.checkpoint_dir import load_model_config, resolve_checkpoint

    root, *_ = megatron_lm_checkpoint
    ckpt = resolve_checkpoint(root)
    assert ckpt.name == f"iter_{ITERATION:07d}"
    cfg = load_model_config(ckpt)
    assert (cfg.num_query_groups, cfg.rotary_base, cfg.norm_epsilon) == (2, 20000, 1e-6)
    assert cfg.swiglu and cfg.add_qkv_bias and not cfg.add_bias_linear
    assert cfg.vocab_size == tiny_data.vocab_size and cfg.trained_padded_vocab_size == 384


@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 2)], ids=["tp1", "tp2pp2"])
def test_megatron_lm_checkpoint_loads_as_teacher_at_any_layout(megatron_lm_checkpoint, tp, pp):
    root, tokens, want = megatron_lm_checkpoint
    got = run_on_ranks(_teacher_logits, tp * pp, str(root), tp, pp, tokens)[-1]
    assert (got - want).abs().max().item() <= 1e-4


def test_unsupported_arguments_are_refused_by_name(tiny_data, tmp_path):
    from megatron_salt.convert.errors import ConversionError
    from megatron_salt.convert.megatron_lm import model_config_from_args

    good = megatron_lm_args(tiny_data.tokenizer_model)
    assert model_config_from_args(good, "ckpt").num_layers == 2
    for name, value in (("qk_layernorm", True), ("num_experts", 8),
                        ("position_embedding_type", "mrope"), ("rotary_interleaved", True),
                        ("spec", ["some.module", "spec"])):  # fmt: skip
        bad = Namespace(**{**vars(good), name: value})
        with pytest.raises(ConversionError, match=f"{name}="):
            model_config_from_args(bad, "ckpt")


def test_megatron_lm_checkpoint_starts_a_student_with_finetune(
    tiny_data, megatron_lm_checkpoint, tmp_path
):
    root, *_ = megatron_lm_checkpoint
    model = ["--num-layers", "2", "--hidden-size", "48", "--ffn-hidden-size", "80",
             "--num-attention-heads", "4", "--group-query-attention", "--num-query-groups", "2",
             "--normalization", "RMSNorm", "--norm-epsilon", "1e-6", "--swiglu",
             "--disable-bias-linear", "--add-qkv-bias", "--untie-embeddings-and-output-weights",
             "--rotary-base", "20000"]  # fmt: skip
    argv = [*model, *common_args(tiny_data, tmp_path / "run", "--train-iters", "1")]
    argv[argv.index("--seq-length") + 1] = str(SEQ)
    with pytest.raises(RankFailed, match="--finetune"):
        pretrain_on(1, [*argv, "--load", str(root)])
    summary = pretrain_on(1, [*argv, "--load", str(root), "--finetune"])
    assert summary["iteration"] == 1


def test_scorer_reads_a_megatron_lm_checkpoint(megatron_lm_checkpoint):
    root, *_ = megatron_lm_checkpoint
    cfg = run_on_ranks(_scorer_config, 1, str(root))[0]
    assert cfg["seq_length"] == SEQ and cfg["trained_padded_vocab_size"] == 384


def _scorer_config(root: str) -> dict:
    from megatron_salt.convert.hf import single_process_megatron
    from megatron_salt.selection.scoring import SLMScorer

    with single_process_megatron():
        scorer = SLMScorer(root)
        assert scorer.iteration == ITERATION
        return dataclasses.asdict(scorer.model_cfg)
