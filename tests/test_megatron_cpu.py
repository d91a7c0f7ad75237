"""Megatron-Core on CPU/gloo through megatron_salt.compat: TP=2 and PP=2 equal one process.

Each case runs on 2 forked gloo ranks. The reference is the same GPTModel at
TP=1/PP=1 computed on the same ranks; its weights are handed to the parallel
layout through Megatron's own dist_checkpointing (save at TP1, load resharded).
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist

from megatron_salt.testing import run_on_ranks

SEQ, MBS, VOCAB, LAYERS = 16, 2, 96, 4


def _build(tp: int, pp: int, ddp: bool = False, dist_opt: bool = False):
    from megatron.core import parallel_state as ps
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.models.gpt.gpt_model import GPTModel
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed
    from megatron.core.transformer.transformer_config import TransformerConfig

    ps.destroy_model_parallel()
    ps.initialize_model_parallel(tp, pp)
    model_parallel_cuda_manual_seed(1234)
    cfg = TransformerConfig(
        num_layers=LAYERS,
        hidden_size=64,
        num_attention_heads=4,
        use_cpu_initialization=True,
        pipeline_dtype=torch.float32,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        hidden_dropout=0.0,
        attention_dropout=0.0,
    )
    model = GPTModel(
        cfg,
        get_gpt_layer_local_spec(),
        vocab_size=VOCAB,
        max_sequence_length=SEQ,
        position_embedding_type="rope",
        share_embeddings_and_output_weights=True,  # Megatron-LM's default (tied)
        pre_process=ps.is_pipeline_first_stage(),
        post_process=ps.is_pipeline_last_stage(),
    )
    if ddp:
        from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

        model = DistributedDataParallel(
            cfg,
            DistributedDataParallelConfig(use_distributed_optimizer=dist_opt),
            model,
        )
    return model, cfg


def _batches(n: int, seed: int = 7) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, VOCAB, (MBS, SEQ + 1), generator=gen)
        out.append({"tokens": ids[:, :-1], "labels": ids[:, 1:]})
    return out


def _forward_step(batch_iter, model):
    batch = next(batch_iter)
    pos = torch.arange(SEQ).unsqueeze(0).expand(MBS, -1)
    out = model(batch["tokens"], pos, None, labels=batch["labels"])

    def loss_func(per_token):
        loss = per_token.float().mean()
        # clone: the schedule divides the returned loss in place
        return loss, {"lm loss": loss.detach().clone()}

    return out, loss_func


def _run_schedule(model, cfg, batches, forward_only=False):
    from megatron.core.pipeline_parallel import get_forward_backward_func

    losses = get_forward_backward_func()(
        forward_step_func=_forward_step,
        data_iterator=iter(batches),
        model=[model],
        num_microbatches=len(batches),
        seq_length=SEQ,
        micro_batch_size=MBS,
        forward_only=forward_only,
    )
    if not losses:  # not the last pipeline stage
        return None
    return sum(float(x["lm loss"]) for x in losses) / len(losses)


def _global_grads(model) -> dict[str, torch.Tensor]:
    """Full (TP-gathered) gradients keyed by global parameter name, merged over PP."""
    from megatron.core import parallel_state as ps

    tp_group = ps.get_tensor_model_parallel_group()
    tp = ps.get_tensor_model_parallel_world_size()
    layers_per_stage = LAYERS // ps.get_pipeline_model_parallel_world_size()
    offset = ps.get_pipeline_model_parallel_rank() * layers_per_stage
    local = {}
    for name, param in model.named_parameters():
        grad = param.main_grad if hasattr(param, "main_grad") else param.grad
        grad = grad.detach().clone()
        if getattr(param, "tensor_model_parallel", False) and tp > 1:
            parts = [torch.empty_like(grad) for _ in range(tp)]
            dist.all_gather(parts, grad, group=tp_group)
            grad = torch.cat(parts, dim=param.partition_dim)
        name = name.removeprefix("module.")
        if name.startswith("decoder.layers."):
            _, _, idx, rest = name.split(".", 3)
            name = f"decoder.layers.{int(idx) + offset}.{rest}"
        local[name] = grad
    gathered: list[dict] = [None] * dist.get_world_size()  # type: ignore[list-item]
    dist.all_gather_object(gathered, local)
    merged: dict[str, torch.Tensor] = {}
    for part in gathered:
        merged.update(part)
    return merged


def _reference(ckpt_dir: str, batches):
    """TP1/PP1 loss and grads; also saves the weights for the parallel run to load."""
    from megatron.core import dist_checkpointing

    model, cfg = _build(1, 1)
    loss = _run_schedule(model, cfg, batches)
    grads = _global_grads(model)
    if dist.get_rank() == 0:
        os.makedirs(ckpt_dir, exist_ok=True)
    dist.barrier()
    dist_checkpointing.save(model.sharded_state_dict(), ckpt_dir)
    return loss, grads


def _load(model, ckpt_dir: str) -> None:
    from megatron.core import dist_checkpointing

    inner = getattr(model, "module", model)
    inner.load_state_dict(dist_checkpointing.load(inner.sharded_state_dict(), ckpt_dir))


def _parallel_matches_single(tp: int, pp: int, ckpt_dir: str):
    batches = _batches(2)
    ref_loss, ref_grads = _reference(ckpt_dir, batches)
    model, cfg = _build(tp, pp, ddp=True)
    _load(model, ckpt_dir)
    from megatron.core.distributed import finalize_model_grads

    cfg.finalize_model_grads_func = finalize_model_grads
    model.zero_grad_buffer()
    loss = _run_schedule(model, cfg, batches)
    return ref_loss, loss, ref_grads, _global_grads(model)


@pytest.mark.parametrize("tp,pp", [(2, 1), (1, 2)], ids=["tp2", "pp2"])
def test_parallel_gpt_equals_single_process(tmp_path, tp, pp):
    results = run_on_ranks(_parallel_matches_single, 2, tp, pp, str(tmp_path / "ckpt"))
    ref_loss, _, ref_grads, grads = results[0]
    losses = [r[1] for r in results if r[1] is not None]
    assert losses, "no rank reported a loss"
    for loss in losses:
        assert loss == pytest.approx(ref_loss, rel=1e-6, abs=1e-6)
    # With PP>1 the last stage holds a copy of the tied embedding as the output
    # layer; finalize_model_grads must have given it the embedding's full gradient.
    assert ("output_layer.weight" in grads) == (pp > 1)
    if pp > 1:
        torch.testing.assert_close(
            grads.pop("output_layer.weight"), ref_grads["embedding.word_embeddings.weight"]
        )
    assert set(grads) == set(ref_grads)
    for name, ref in ref_grads.items():
        torch.testing.assert_close(grads[name], ref, rtol=1e-5, atol=1e-6, msg=name)


def _train_steps(dist_opt: bool, data_parallel: bool, steps: int = 3):
    """A few Adam steps; DP=2 ranks see half of the global batch each."""
    from megatron.core.distributed import finalize_model_grads
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    torch.manual_seed(0)
    model, cfg = _build(1, 1, ddp=True, dist_opt=dist_opt)
    cfg.finalize_model_grads_func = finalize_model_grads
    opt = get_megatron_optimizer(
        OptimizerConfig(
            optimizer="adam", lr=1e-2, use_distributed_optimizer=dist_opt, clip_grad=1.0
        ),
        [model],
    )
    losses = []
    for step in range(steps):
        batches = _batches(2, seed=step)
        if data_parallel:
            batches = batches[dist.get_rank() :: 2]
        model.zero_grad_buffer()
        opt.zero_grad()
        loss = _run_schedule(model, cfg, batches)
        ok, grad_norm, _ = opt.step()
        assert ok
        losses.append((loss, grad_norm))
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    return losses, params


def _ddp_vs_single():
    # "single": each rank sees the whole global batch as 2 microbatches
    # (grads are averaged over microbatches and DP ranks alike).
    single = _train_steps(dist_opt=False, data_parallel=False)
    ddp = _train_steps(dist_opt=False, data_parallel=True)
    dist_opt = _train_steps(dist_opt=True, data_parallel=True)
    return single, ddp, dist_opt


def test_ddp_and_distributed_optimizer_match_single_process():
    rank0, rank1 = run_on_ranks(_ddp_vs_single, 2)
    single = rank0[0]
    assert single[0] == rank1[0][0], "identical replicas diverged"
    for which, atol in ((1, 1e-6), (2, 2e-5)):
        for step, ((ref_loss, ref_norm), (loss0, norm), (loss1, _)) in enumerate(
            zip(single[0], rank0[which][0], rank1[which][0], strict=True)
        ):
            # Each DP rank reports the loss of its half of the global batch.
            assert (loss0 + loss1) / 2 == pytest.approx(ref_loss, rel=1e-6), step
            assert norm == pytest.approx(ref_norm, rel=1e-6), step
        # The distributed optimizer reduce-scatters instead of all-reducing, which
        # changes fp32 summation order; Adam turns that noise on the (exactly zero)
        # key-bias gradients into updates of ~1e-5, hence its looser atol.
        for name, ref in single[1].items():
            torch.testing.assert_close(rank0[which][1][name], ref, rtol=1e-5, atol=atol, msg=name)


def test_cpu_patches_are_a_no_op_with_cuda(monkeypatch):
    import megatron_salt.compat.cpu as cpu

    monkeypatch.setattr(cpu, "_APPLIED", False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cpu.apply_cpu_patches() is False


@pytest.mark.parametrize("kernels", [False, True])
def test_gpu_softmax_fusion_only_with_apex_kernels(monkeypatch, kernels):
    """On a GPU without apex, Megatron-Core's local attention would import apex's softmax
    kernels for bf16 scores and fail; the config keeps that fusion off there."""
    from megatron_salt import model
    from megatron_salt.config import ModelConfig, ParallelConfig, PrecisionConfig

    monkeypatch.setattr(model.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(model, "have_fused_softmax_kernels", lambda: kernels)
    cfg = model.transformer_config(
        ModelConfig(num_layers=2, hidden_size=64, num_attention_heads=4, seq_length=32,
                    vocab_size=100),
        ParallelConfig(),
        PrecisionConfig(bf16=True),
    )  # fmt: skip
    assert cfg.masked_softmax_fusion is kernels
    assert cfg.bias_dropout_fusion  # the torch-only fusions stay on
