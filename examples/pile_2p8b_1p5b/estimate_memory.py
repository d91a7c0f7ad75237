#!/usr/bin/env python
"""Expected GPU memory per rank of the pile_2p8b_1p5b runs, computed from their configs.

    python examples/pile_2p8b_1p5b/estimate_memory.py [--nodes 8] [--capacity-gib 79.1]

The command lines come from ``train.sh`` itself (``PRINT_ARGS=1``), so the table
describes exactly what a launch runs; alternative layouts are the same script with
other environment settings. Parameter counts come from
:meth:`megatron_salt.config.ModelConfig.num_parameters` at the padded vocabulary.

What a GPU holds, in bytes (``P`` = parameters on this rank, ``d`` = data-parallel size):

* **weights**: bf16 parameters, ``2 P``. Under FP8 (Transformer Engine) the bf16
  weights stay the masters; TE additionally caches an FP8 copy of each GEMM weight
  and its transpose across the micro-batches of a step. Assumed: ``+2 B`` per
  transformer-layer parameter for the student, ``+1 B`` for the inference-only
  teacher (embeddings and output layer are not FP8).
* **grads**: Megatron-Core DDP's contiguous gradient buffer, fp32 because the trainer
  sets ``grad_reduce_in_fp32`` for bf16 (``4 P``; the distributed optimizer
  reduce-scatters into it, the buffer itself is not sharded), plus during backward one
  bf16 weight gradient before it is added to the buffer (gradient accumulation fusion
  is off), the largest being the output layer's.
* **optimizer**: fp32 main parameters and Adam's two moments, ``12 P``, sharded over
  data-parallel ranks by the distributed optimizer (``12 P / d``). Together this is
  Megatron-LM's ``6 + 12/d`` bytes per parameter (docs/source/api-guide/dist_optimizer.md).
* **activations**: what one transformer layer saves for backward without recomputation,
  itemised after Korthikanti et al. 2022 (arXiv 2205.05198, Sec. 4.1): per layer
  ``s*b*h*(34 + 5*a*s/h)`` bytes on one GPU, and with tensor parallelism but no sequence
  parallelism ``s*b*h*(10 + 24/t + 5*a*s/(h*t))`` -- the variant used here, since the
  trainer does not enable sequence parallelism. :func:`layer_activation_bytes`
  generalises it to any FFN width, GQA and SwiGLU, drops the dropout masks when dropout
  is 0 (torch stores none), and drops ``5*a*s/h`` under flash/fused attention (TE's
  attention on H100), which keeps only Q, K, V and the output. With 1F1B pipelining,
  stage ``i`` of ``p`` holds ``min(p - i, m)`` micro-batches in flight. The last stage
  also saves the final norm's and the output layer's inputs (``4sbh``).
  FP8 assumption: activations are counted at bf16. TE saves some GEMM inputs in FP8,
  which would shrink the estimate; counting bf16 keeps it an upper bound.
* **logits/KD** (last stage; ``N = s*b`` tokens, ``V/t`` vocab columns per rank):
  the bf16 logits (2 B each) and the fp32 copy Megatron-Core's
  ``vocab_parallel_cross_entropy`` makes and keeps as the softmax (4 B), then one bf16
  gradient (2 B): 6 B per logit without KD. During KD the KD loss also keeps the bf16
  student and teacher logits for its backward and adds its bf16 gradient (8 B for the
  student side); on ``--log-interval`` steps the teacher's loss is measured on an fp32
  copy of its logits (+2 B). The KD loss itself keeps only ``O(N)`` statistics plus three
  fp32 work buffers of ``CHUNK_ELEMENTS`` (``megatron_salt.distill.kd_loss``).
  The teacher logits held until the student's backward are counted here too: the
  student's shard ``2 N V/t``, or the teacher's whole ``2 N V`` on ranks where the
  shard is a view of an unsharded teacher's logits (teacher TP=1 under student TP>1,
  ``megatron_salt.distill.vocab.teacher_logits_to_student_shard``).
* **teacher**: frozen bf16 weights of this rank's teacher share (its own TP/PP), no
  gradients or optimizer state; no-grad inference keeps about one layer's tensors at a
  time; with teacher PP>1, the hidden states sent to the next teacher stage stay alive
  until the end of the step (``Teacher.finish_step``).

Each stage is evaluated at two moments and the larger counts: the teacher's forward
of a micro-batch (the student then holds one micro-batch fewer in flight) and the
student's loss and backward. CUDA context, NCCL buffers and allocator fragmentation
are not modelled: the fit check keeps ``--reserve-gib`` free for them.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import megatron_salt.distill.kd_loss as kd_loss_impl
from megatron_salt.config import ModelConfig
from megatron_salt.training.arguments import build_parser, model_config_from_args

EXAMPLE_DIR = Path(__file__).resolve().parent
TRAIN_SH = EXAMPLE_DIR / "train.sh"
GIB = 2**30
# len() of the GPT-NeoX-20B tokenizer.json, added tokens included (what
# HuggingFaceTokenizer.vocab_size reports).
GPT_NEOX_VOCAB_SIZE = 50277
# torch.cuda.get_device_properties(0).total_memory of an H100 SXM 80GB.
H100_80GB_GIB = 79.1

BF16, FP32 = 2, 4


# --- parameters -----------------------------------------------------------------


def padded_config(cfg: ModelConfig, tensor_parallel: int) -> ModelConfig:
    """``cfg`` with its vocabulary padded the way the model is built at this TP size."""
    return dataclasses.replace(
        cfg, vocab_size=cfg.padded_vocab_size(tensor_parallel), trained_padded_vocab_size=None
    )


@dataclass(frozen=True)
class ParameterCounts:
    """A model's parameters, split the way Megatron-Core places them on ranks.

    Every count is a difference of :meth:`ModelConfig.num_parameters` values at the
    padded vocabulary; only *which* parameters tensor parallelism replicates (the
    norms and the biases of the row-parallel projections) is layout knowledge that
    ``num_parameters`` does not have.
    """

    num_layers: int
    per_layer: int
    per_layer_replicated: int  # held whole by every TP rank
    final_norm: int
    word_embedding: int  # [padded vocab, h], vocab-parallel
    position_embedding: int  # learned absolute positions, replicated over TP
    output_layer: int  # untied output weight, vocab-parallel; 0 when tied
    total: int  # num_parameters() at the padded vocabulary

    @classmethod
    def from_config(cls, cfg: ModelConfig, tensor_parallel: int) -> ParameterCounts:
        padded = padded_config(cfg, tensor_parallel)

        def body(num_layers: int) -> int:
            layers = dataclasses.replace(padded, num_layers=num_layers)
            return layers.num_parameters(include_embeddings=False)

        tied = dataclasses.replace(padded, untie_embeddings_and_output_weights=False)
        untied = dataclasses.replace(padded, untie_embeddings_and_output_weights=True)
        word = untied.num_parameters() - tied.num_parameters()
        input_embeddings = tied.num_parameters() - tied.num_parameters(include_embeddings=False)
        final_norm = body(0)  # a model without layers is its final norm
        row_parallel_biases = 2 * cfg.hidden_size if cfg.add_bias_linear else 0
        counts = cls(
            num_layers=cfg.num_layers,
            per_layer=body(1) - body(0),
            per_layer_replicated=2 * final_norm + row_parallel_biases,
            final_norm=final_norm,
            word_embedding=word,
            position_embedding=input_embeddings - word,
            output_layer=word if cfg.untie_embeddings_and_output_weights else 0,
            total=padded.num_parameters(),
        )
        assert counts.stage_sum() == counts.total, "parameter split does not add up"
        return counts

    def stage_sum(self) -> int:
        return (
            self.num_layers * self.per_layer
            + self.final_norm
            + self.word_embedding
            + self.position_embedding
            + self.output_layer
        )

    def layer_params_per_rank(self, tensor_parallel: int) -> int:
        split = self.per_layer - self.per_layer_replicated
        return split // tensor_parallel + self.per_layer_replicated

    def per_rank(self, tensor_parallel: int, pipeline_parallel: int, stage: int) -> int:
        """Parameters on one rank of pipeline ``stage``.

        The first stage holds the input embeddings; the last the final norm and the
        output layer -- with tied embeddings and PP>1 a copy of the word embeddings
        that Megatron keeps in sync, with PP=1 nothing extra.
        """
        count = (self.num_layers // pipeline_parallel) * self.layer_params_per_rank(tensor_parallel)
        if stage == 0:
            count += self.word_embedding // tensor_parallel + self.position_embedding
        if stage == pipeline_parallel - 1:
            count += self.final_norm
            if self.output_layer:
                count += self.output_layer // tensor_parallel
            elif pipeline_parallel > 1:
                count += self.word_embedding // tensor_parallel
        return count

    def largest_weight_per_rank(self, cfg: ModelConfig, tensor_parallel: int) -> int:
        """Elements of the largest weight matrix on a rank (its bf16 gradient is a transient)."""
        h, f = cfg.hidden_size, cfg.ffn_hidden_size
        fc1 = h * f * (2 if cfg.swiglu else 1)
        return max(self.word_embedding, fc1) // tensor_parallel


# --- layouts and the step -----------------------------------------------------------


@dataclass(frozen=True)
class ModelLayout:
    """One model on the cluster: architecture (true vocab) and its TP/PP sizes."""

    config: ModelConfig
    tensor_parallel: int = 1
    pipeline_parallel: int = 1

    @property
    def counts(self) -> ParameterCounts:
        return ParameterCounts.from_config(self.config, self.tensor_parallel)

    @property
    def padded_vocab(self) -> int:
        return self.config.padded_vocab_size(self.tensor_parallel)


@dataclass(frozen=True)
class StepShape:
    micro_batch_size: int
    seq_length: int
    num_microbatches: int = 1  # per data-parallel rank and step

    @property
    def tokens(self) -> int:
        return self.micro_batch_size * self.seq_length


@dataclass(frozen=True)
class Assumptions:
    flash_attention: bool = True  # TE / cuDNN fused attention: no [s, s] scores kept
    fp8: bool = False
    distributed_optimizer: bool = True
    grad_reduce_in_fp32: bool = True  # what the trainer sets for --bf16
    student_fp8_weight_bytes: int = 2  # FP8 weight + transpose cache per layer parameter
    teacher_fp8_weight_bytes: int = 1  # FP8 weight only: the teacher never runs backward


@dataclass(frozen=True)
class KDSetup:
    teacher: ModelLayout
    top_k: int | None = None
    measure: bool = True  # --log-interval steps also measure teacher loss and agreement


@dataclass
class StageMemory:
    """Bytes on the most loaded GPU of one pipeline stage, at its peak moment."""

    stage: int
    moment: str  # "student backward" or "teacher forward"
    weights: float = 0.0
    grads: float = 0.0
    optimizer: float = 0.0
    activations: float = 0.0
    logits_kd: float = 0.0
    teacher: float = 0.0

    @property
    def total(self) -> float:
        return (
            self.weights
            + self.grads
            + self.optimizer
            + self.activations
            + self.logits_kd
            + self.teacher
        )


# --- the terms --------------------------------------------------------------------------


def layer_activation_bytes(
    cfg: ModelConfig, tensor_parallel: int, shape: StepShape, flash_attention: bool
) -> float:
    """Bytes one transformer layer saves for backward (bf16, no recomputation, no SP).

    Itemised after Korthikanti et al. 2022, Sec. 4.1. Replicated over TP: the two
    norm inputs, the QKV and FC1 inputs (``2sbh`` each) and the two hidden-dropout masks
    (``sbh`` each). Split over TP: Q, K, V; the attention output (the projection's
    input); FC1's output (the activation's input; twice as wide for SwiGLU) and the
    activation's output (FC2's input). Unfused attention adds the softmax output
    (``2as^2b``) and, with attention dropout, its mask and output (``3as^2b``). For
    ``f = 4h``, MHA and dropout this is exactly ``sbh(10 + 24/t + 5as/(ht))``.
    """
    s, b, h = shape.seq_length, shape.micro_batch_size, cfg.hidden_size
    a, f = cfg.num_attention_heads, cfg.ffn_hidden_size
    kv = h * (cfg.num_query_groups or a) // a
    fc1_out = 2 * f if cfg.swiglu else f
    replicated = BF16 * s * b * h * 4  # two norm inputs, QKV input, FC1 input
    if cfg.hidden_dropout > 0:
        replicated += 2 * s * b * h  # two 1-byte masks
    split = BF16 * s * b * ((h + 2 * kv) + h + fc1_out + f)
    if not flash_attention:
        split += BF16 * a * s * s * b
        if cfg.attention_dropout > 0:
            split += 3 * a * s * s * b
    return replicated + split / tensor_parallel


def in_flight_microbatches(stage: int, pipeline_parallel: int, num_microbatches: int) -> int:
    """Micro-batches whose activations stage ``stage`` holds at once under 1F1B."""
    return min(pipeline_parallel - stage, num_microbatches)


def teacher_layer_forward_bytes(cfg: ModelConfig, tensor_parallel: int, shape: StepShape) -> float:
    """Peak of one teacher layer under ``no_grad``: nothing is kept for a backward.

    The layer input, the norm output and the layer output (``2sbh`` each) plus the
    larger of the attention (Q, K, V and the context) and the MLP (FC1 output and
    activation output) intermediates of this rank's TP shard.
    """
    s, b, h = shape.seq_length, shape.micro_batch_size, cfg.hidden_size
    a, f = cfg.num_attention_heads, cfg.ffn_hidden_size
    kv = h * (cfg.num_query_groups or a) // a
    attention = (h + 2 * kv) + h
    mlp = (2 * f if cfg.swiglu else f) + f
    return BF16 * s * b * (3 * h + max(attention, mlp) / tensor_parallel)


def teacher_logits_bytes_per_token(
    vocab_size: int, teacher: ModelLayout, student: ModelLayout
) -> tuple[float, float]:
    """(held until the student's backward, peak while producing them), per token.

    Follows ``teacher_logits_to_student_shard``: the same padded vocab and TP group
    hands the teacher's tensor through; an unsharded teacher is sliced (a view that
    keeps the whole tensor alive where the student's shard has no padding, else a
    copy); anything else all-gathers the teacher's vocab, then copies the shard.
    """
    t_padded, tt = teacher.padded_vocab, teacher.tensor_parallel
    s_padded, ts = student.padded_vocab, student.tensor_parallel
    own = BF16 * t_padded / tt
    shard = BF16 * s_padded / ts
    if t_padded == s_padded and tt == ts:
        return shard, shard
    if tt == 1:
        if s_padded // ts <= vocab_size:  # some rank's shard is all real tokens: a view
            return own, own
        return shard, own + shard
    return shard, own + BF16 * t_padded + shard


def student_logits_bytes_per_token(student: ModelLayout, kd: bool, measure: bool) -> float:
    """Student-side logits memory per token at the loss (see the module docstring)."""
    v_local = student.padded_vocab / student.tensor_parallel
    if not kd:
        return (BF16 + FP32) * v_local  # bf16 logits + CE's fp32 copy; then softmax + grad
    per_logit = BF16 + FP32 + BF16  # saved by KD, CE softmax, one gradient
    if measure:
        per_logit = BF16 + FP32 + FP32  # teacher CE on an fp32 copy, before backward
    return per_logit * v_local


def kd_workspace_bytes(top_k: int | None) -> float:
    """The KD loss's token-chunked fp32 buffers (three in forward, two in backward)."""
    chunk = kd_loss_impl.CHUNK_ELEMENTS
    return 3 * FP32 * chunk + (chunk if top_k is not None else 0)


# --- the estimate -----------------------------------------------------------------------


def _stage_memory(
    student: ModelLayout,
    shape: StepShape,
    data_parallel: int,
    stage: int,
    kd: KDSetup | None,
    assume: Assumptions,
) -> StageMemory:
    cfg, tp, pp = student.config, student.tensor_parallel, student.pipeline_parallel
    counts = student.counts
    params = counts.per_rank(tp, pp, stage)
    layers = cfg.num_layers // pp
    last = stage == pp - 1

    weights = BF16 * params
    if assume.fp8:
        weights += assume.student_fp8_weight_bytes * layers * counts.layer_params_per_rank(tp)
    grad_bytes = FP32 if assume.grad_reduce_in_fp32 else BF16
    grads = grad_bytes * params
    main_grads = 0 if assume.grad_reduce_in_fp32 else FP32 * params  # optimizer's fp32 copy
    optimizer = 3 * FP32 * params + main_grads
    if assume.distributed_optimizer:
        optimizer /= data_parallel
    wgrad = BF16 * counts.largest_weight_per_rank(cfg, tp)

    per_microbatch = layers * layer_activation_bytes(cfg, tp, shape, assume.flash_attention)
    if last:
        per_microbatch += BF16 * shape.tokens * cfg.hidden_size * 2  # final norm, output input
    in_flight = in_flight_microbatches(stage, pp, shape.num_microbatches)

    logits = 0.0
    if last:
        logits = shape.tokens * student_logits_bytes_per_token(
            student, kd is not None, kd is not None and kd.measure
        )

    teacher_static = teacher_forward = 0.0
    if kd is not None:
        teacher = kd.teacher
        t_cfg, tt, tpp = teacher.config, teacher.tensor_parallel, teacher.pipeline_parallel
        t_stage = stage if tpp == pp else (0 if last else None)
        if t_stage is not None:
            t_counts = teacher.counts
            teacher_static = BF16 * t_counts.per_rank(tt, tpp, t_stage)
            if assume.fp8:
                teacher_static += (
                    assume.teacher_fp8_weight_bytes
                    * (t_cfg.num_layers // tpp)
                    * t_counts.layer_params_per_rank(tt)
                )
            hidden = BF16 * shape.tokens * t_cfg.hidden_size
            if t_stage < tpp - 1:  # sends to the next teacher stage, kept until step end
                teacher_static += shape.num_microbatches * hidden
            teacher_forward = teacher_layer_forward_bytes(t_cfg, tt, shape)
            if t_stage > 0:
                teacher_forward += hidden  # receive buffer
        if last:
            held, producing = teacher_logits_bytes_per_token(cfg.vocab_size, teacher, student)
            logits += shape.tokens * held + kd_workspace_bytes(kd.top_k)
            teacher_forward += shape.tokens * producing

    backward = StageMemory(
        stage=stage,
        moment="student backward",
        weights=weights,
        grads=grads + wgrad,
        optimizer=optimizer,
        activations=in_flight * per_microbatch,
        logits_kd=logits,
        teacher=teacher_static,
    )
    if kd is None or teacher_forward == 0.0:
        return backward
    forward = StageMemory(
        stage=stage,
        moment="teacher forward",
        weights=weights,
        grads=grads,
        optimizer=optimizer,
        activations=(in_flight - 1) * per_microbatch,
        teacher=teacher_static + teacher_forward,
    )
    return max(backward, forward, key=lambda m: m.total)


def stage_memories(
    student: ModelLayout,
    shape: StepShape,
    data_parallel: int,
    kd: KDSetup | None = None,
    assume: Assumptions | None = None,
) -> list[StageMemory]:
    """Peak memory of every pipeline stage (a PP=1 model has only stage 0)."""
    assume = assume or Assumptions()
    return [
        _stage_memory(student, shape, data_parallel, stage, kd, assume)
        for stage in range(student.pipeline_parallel)
    ]


def peak(stages: Sequence[StageMemory]) -> StageMemory:
    return max(stages, key=lambda m: m.total)


@dataclass
class Estimate:
    """One run, every stage: during KD (if there is a teacher) and without one."""

    label: str
    layout: str
    during_kd: list[StageMemory] | None
    without_teacher: list[StageMemory]

    @property
    def peak_during_kd(self) -> StageMemory | None:
        return peak(self.during_kd) if self.during_kd else None

    @property
    def peak_without_teacher(self) -> StageMemory:
        return peak(self.without_teacher)


def estimate(
    label: str,
    student: ModelLayout,
    shape: StepShape,
    data_parallel: int,
    kd: KDSetup | None = None,
    assume: Assumptions | None = None,
) -> Estimate:
    """Memory per GPU of a student run, with ``kd``'s teacher and after its release."""
    layout = f"TP{student.tensor_parallel} PP{student.pipeline_parallel} DP{data_parallel}"
    if kd is not None:
        layout += f"; teacher TP{kd.teacher.tensor_parallel} PP{kd.teacher.pipeline_parallel}"
    return Estimate(
        label=label,
        layout=layout + f"; mbs {shape.micro_batch_size}",
        during_kd=stage_memories(student, shape, data_parallel, kd, assume) if kd else None,
        without_teacher=stage_memories(student, shape, data_parallel, None, assume),
    )


# --- the example's runs, read from train.sh -------------------------------------------------


def train_sh_args(mode: str, env: dict[str, str] | None = None) -> list[str]:
    """The pretrain_salt.py arguments ``train.sh`` builds for ``mode`` under ``env``."""
    run_env = {**os.environ, **(env or {}), "MODE": mode, "PRINT_ARGS": "1"}
    out = subprocess.run(["bash", str(TRAIN_SH)], env=run_env, capture_output=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{TRAIN_SH} MODE={mode}: {out.stderr.decode().strip()}")
    return out.stdout.decode().split("\0")[:-1]


@dataclass(frozen=True)
class ExampleRun:
    label: str
    mode: str  # teacher | baseline | salt
    env: dict[str, str] = field(default_factory=dict)


EXAMPLE_RUNS = (
    ExampleRun("teacher 1.5B pretraining", "teacher"),
    ExampleRun("student 2.8B baseline", "baseline"),
    ExampleRun("student 2.8B SALT (default)", "salt"),
    ExampleRun("SALT, student TP2, teacher TP1", "salt", {"STUDENT_TP": "2"}),
    ExampleRun("SALT, student TP2, teacher TP2", "salt", {"STUDENT_TP": "2", "KD_TEACHER_TP": "2"}),
    ExampleRun("SALT, student PP2, teacher PP1", "salt", {"STUDENT_PP": "2"}),
    ExampleRun("SALT, student PP2, teacher PP2", "salt", {"STUDENT_PP": "2", "KD_TEACHER_PP": "2"}),
    ExampleRun("SALT, mbs 8", "salt", {"MBS": "8"}),
    ExampleRun("SALT, mbs 8, no FP8", "salt", {"MBS": "8", "FP8_FORMAT": ""}),
)


def estimate_from_args(
    label: str,
    argv: Sequence[str],
    *,
    world_size: int,
    vocab_size: int = GPT_NEOX_VOCAB_SIZE,
    teacher_argv: Sequence[str] | None = None,
) -> Estimate:
    """Estimate a pretrain_salt.py command line (``teacher_argv``: the teacher's own run)."""
    args = build_parser().parse_args(list(argv))
    tp, pp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size
    if world_size % (tp * pp):
        raise ValueError(f"world size {world_size} is not divisible by TP*PP = {tp * pp}")
    dp = world_size // (tp * pp)
    args.max_position_embeddings = args.max_position_embeddings or args.seq_length
    student = ModelLayout(model_config_from_args(args, vocab_size), tp, pp)
    gbs = args.global_batch_size or args.micro_batch_size * dp
    shape = StepShape(args.micro_batch_size, args.seq_length, gbs // (args.micro_batch_size * dp))
    assume = Assumptions(fp8=args.fp8_format is not None)
    kd = None
    if args.kd_teacher_load is not None:
        if teacher_argv is None:
            raise ValueError(f"{label}: a SALT run needs the teacher's command line")
        t_args = build_parser().parse_args(list(teacher_argv))
        t_args.max_position_embeddings = t_args.max_position_embeddings or t_args.seq_length
        # The checkpoint keeps the vocab padding of the teacher's own run.
        t_cfg = model_config_from_args(t_args, vocab_size)
        t_cfg.trained_padded_vocab_size = t_cfg.padded_vocab_size(t_args.tensor_model_parallel_size)
        kd = KDSetup(
            ModelLayout(
                t_cfg,
                args.kd_teacher_tensor_model_parallel_size or tp,
                args.kd_teacher_pipeline_model_parallel_size,
            ),
            top_k=args.kd_top_k,
        )
    result = estimate(label, student, shape, dp, kd, assume)
    if assume.fp8:
        result.layout += "; FP8"
    return result


def example_estimates(nodes: int, gpus_per_node: int = 8) -> list[Estimate]:
    env = {"NNODES": str(nodes), "GPUS_PER_NODE": str(gpus_per_node)}
    results = []
    for run in EXAMPLE_RUNS:
        run_env = {**env, **run.env}
        teacher = train_sh_args("teacher", run_env) if run.mode == "salt" else None
        results.append(
            estimate_from_args(
                run.label,
                train_sh_args(run.mode, run_env),
                world_size=nodes * gpus_per_node,
                teacher_argv=teacher,
            )
        )
    return results


# --- output -----------------------------------------------------------------------------------

COLUMNS = ("weights", "grads", "optimizer", "activations", "logits_kd", "teacher")


def markdown_table(estimates: Sequence[Estimate], capacity_gib: float, reserve_gib: float) -> str:
    header = (
        "| run | layout | phase | stage | weights | grads | optimizer | activations "
        "| logits/KD | teacher | total | fits |"
    )
    lines = [header, "|" + "---|" * 12]
    for est in estimates:
        phases = [("during KD", est.during_kd)] if est.during_kd else []
        phases.append(("after release" if est.during_kd else "no teacher", est.without_teacher))
        for phase, stages in phases:
            for mem in stages:
                total = mem.total / GIB
                fits = "yes" if total + reserve_gib <= capacity_gib else "**no**"
                cells = " | ".join(f"{getattr(mem, c) / GIB:.1f}" for c in COLUMNS)
                lines.append(
                    f"| {est.label} | {est.layout} | {phase} ({mem.moment}) | {mem.stage} "
                    f"| {cells} | **{total:.1f}** | {fits} |"
                )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=8, help="8-GPU nodes (default 8)")
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument(
        "--capacity-gib", type=float, default=H100_80GB_GIB, help="GPU memory (H100 80GB)"
    )
    parser.add_argument(
        "--reserve-gib",
        type=float,
        default=6.0,
        help="kept free for CUDA context, NCCL buffers and fragmentation (not modelled)",
    )
    args = parser.parse_args(argv)
    try:
        estimates = example_estimates(args.nodes, args.gpus_per_node)
    except (RuntimeError, ValueError) as err:
        print(f"estimate_memory.py: error: {err}", file=sys.stderr)
        return 2
    world = args.nodes * args.gpus_per_node
    print(
        f"Expected memory per GPU (GiB) on {args.nodes} x {args.gpus_per_node} GPUs "
        f"({world} ranks), every pipeline stage; fits = total + {args.reserve_gib:g} GiB "
        f"reserve <= {args.capacity_gib:g} GiB.\n"
    )
    print(markdown_table(estimates, args.capacity_gib, args.reserve_gib))
    return 0


if __name__ == "__main__":
    sys.exit(main())
