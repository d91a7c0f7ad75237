"""The SLM teacher: a frozen GPTModel co-located with the student in its own groups.

The teacher is a checkpoint written by ``pretrain_salt.py``, imported from
HuggingFace by ``tools/convert_checkpoint.py``, or written by Megatron-LM; its
:class:`ModelConfig` (saved, or read from Megatron-LM's stored arguments) defines
the architecture, and Megatron's dist_checkpointing reshards it to the teacher's
own TP/PP sizes at load time.

It runs *just in time*: inside the student's ``forward_step`` for micro-batch
``m`` on student stage ``j``, the teacher runs its stage ``j`` on the same
micro-batch and sends the hidden state to stage ``j+1`` over the teacher's own
pipeline group (non-blocking, so it cannot deadlock against the student's
blocking p2p). The student's schedule visits micro-batches in the same order
on every stage, so stage ``j+1`` receives it in its own ``forward_step(m)``.
Nothing is buffered across micro-batches, and the teacher adds no pipeline
bubble of its own. On the last stage the logits are re-sharded to the
student's vocab shards and handed to the KD loss.
"""

from __future__ import annotations

import gc
import logging
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, parallel_state

from megatron_salt.checkpoint_dir import load_model_config, open_checkpoint, reading_checkpoint
from megatron_salt.compat import current_device
from megatron_salt.config import ModelConfig, ParallelConfig, PrecisionConfig
from megatron_salt.convert.tokenizer_files import checkpoint_tokenizer
from megatron_salt.distill import check_vocab_compatible, teacher_logits_to_student_shard
from megatron_salt.model import SaltGPTModel, build_gpt_model, transformer_config
from megatron_salt.parallel import TeacherPlacement, build_teacher_placement
from megatron_salt.rng import preserved_rng_state
from megatron_salt.tokenizer import TokenizerError, build_tokenizer

logger = logging.getLogger(__name__)


class Teacher:
    """A frozen teacher stage on this rank (or nothing, if no stage lives here)."""

    def __init__(
        self,
        model: SaltGPTModel | None,
        model_cfg: ModelConfig,
        placement: TeacherPlacement,
        *,
        student_padded_vocab: int,
        micro_batch_size: int,
        seq_length: int,
        dtype: torch.dtype,
    ) -> None:
        self.model = model
        self.model_cfg = model_cfg
        self.placement = placement
        self.student_padded_vocab = student_padded_vocab
        self.hidden_shape = (seq_length, micro_batch_size, model_cfg.hidden_size)
        self.dtype = dtype
        self._pending_sends: list[dist.Work] = []

    @classmethod
    def from_checkpoint(
        cls,
        load_dir: str | Path,
        *,
        student_cfg: ModelConfig,
        tensor_model_parallel_size: int,
        pipeline_model_parallel_size: int,
        precision: PrecisionConfig,
        micro_batch_size: int,
        verify: bool = True,
        student_tokenizer: tuple[str, str] | None = None,
    ) -> Teacher:
        """Build the teacher's groups and load its weights (collective over all ranks).

        ``verify``: check the checkpoint's files against its manifest first.
        ``student_tokenizer``: ``(tokenizer_type, tokenizer_model)`` of the student, checked
        against the tokenizer the teacher's checkpoint names, when it names one.
        """
        ckpt_dir = open_checkpoint(load_dir, verify=verify, log=logger.warning).path
        model_cfg = load_model_config(ckpt_dir)
        check_vocab_compatible(model_cfg.vocab_size, student_cfg.vocab_size)
        check_same_tokenizer(ckpt_dir, student_tokenizer)
        if model_cfg.seq_length < student_cfg.seq_length and (
            model_cfg.position_embedding_type == "learned_absolute"
        ):
            raise ValueError(
                f"teacher {ckpt_dir} has learned positions for {model_cfg.max_position_embeddings}"
                f" tokens, the student trains on --seq-length {student_cfg.seq_length}"
            )
        placement = build_teacher_placement(
            tensor_model_parallel_size, pipeline_model_parallel_size
        )
        # The teacher must not consume the student's RNG streams (a run with
        # --kd-alpha 0 must train exactly like the baseline).
        with preserved_rng_state():
            model = load_frozen_gpt(
                ckpt_dir,
                model_cfg,
                ParallelConfig(tensor_model_parallel_size, pipeline_model_parallel_size),
                precision,
                placement=placement,
            )
        logger.info(
            "teacher %s: %s params, TP=%d PP=%d, %s",
            ckpt_dir,
            f"{model_cfg.num_parameters():,}",
            tensor_model_parallel_size,
            pipeline_model_parallel_size,
            f"stage {placement.stage} on this rank"
            if placement.hosts_teacher
            else "not on this rank",
        )
        return cls(
            model,
            model_cfg,
            placement,
            student_padded_vocab=student_cfg.padded_vocab_size(
                parallel_state.get_tensor_model_parallel_world_size()
            ),
            micro_batch_size=micro_batch_size,
            seq_length=student_cfg.seq_length,
            dtype=precision.params_dtype,
        )

    @property
    def teacher_padded_vocab(self) -> int:
        return self.model_cfg.padded_vocab_size(self.placement.tensor_model_parallel_size)

    @torch.no_grad()
    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Run this rank's teacher stage on one micro-batch.

        Returns teacher logits aligned with the student's vocab shard ``[s, b, v/tp]``
        on the student's last stage, else None.
        """
        if self.model is None:
            return None
        placement = self.placement
        if not placement.is_first_stage:
            hidden = torch.empty(self.hidden_shape, dtype=self.dtype, device=current_device())
            dist.recv(hidden, src=placement.prev_rank, group=placement.pg_collection.pp)
            self.model.set_input_tensor(hidden)
        output = self.model(
            batch["tokens"],
            batch["position_ids"],
            batch.get("attention_mask"),
            labels=batch["labels"],
        )
        if not placement.is_last_stage:
            # At most one activation in flight: the next stage takes the previous
            # micro-batch in the same order, so waiting here cannot deadlock.
            self.finish_step()
            send = dist.isend(
                output.contiguous(), dst=placement.next_rank, group=placement.pg_collection.pp
            )
            self._pending_sends.append(send)
            return None
        return teacher_logits_to_student_shard(
            output,
            vocab_size=self.model_cfg.vocab_size,
            teacher_padded_vocab=self.teacher_padded_vocab,
            student_padded_vocab=self.student_padded_vocab,
            teacher_tp_group=placement.pg_collection.tp,
            student_tp_group=parallel_state.get_tensor_model_parallel_group(),
        )

    def finish_step(self) -> None:
        """Wait for outgoing activations (their buffers must stay alive until sent)."""
        for work in self._pending_sends:
            work.wait()
        self._pending_sends.clear()

    def release(self) -> int:
        """Drop the model and its process groups; return the parameter bytes freed here."""
        self.finish_step()
        freed = 0
        if self.model is not None:
            freed = sum(p.numel() * p.element_size() for p in self.model.parameters())
        self.model = None
        for group in self.placement.groups:
            dist.destroy_process_group(group)
        self.placement.groups.clear()
        self.placement.pg_collection = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return freed


# Words, digits, punctuation, accents, CJK, code: where tokenizers of one size still differ.
TOKENIZER_PROBE = (
    "SALT: A Little Help Goes a Long Way (2024), naïve café, 東京, 1234567.\n"
    "def f(x):\n    return x ** 2  # ok\n"
)


def check_same_tokenizer(ckpt_dir: Path, student_tokenizer: tuple[str, str] | None) -> None:
    """Refuse a teacher whose tokenizer encodes text differently from the student's.

    Equal vocabulary sizes are necessary, not sufficient: two BPE models of one size
    assign different ids. Only checked when the checkpoint names a tokenizer (its
    ``tokenizer/`` directory from import-hf, or ``run_args.json``) that exists here.
    """
    found = checkpoint_tokenizer(ckpt_dir)
    if student_tokenizer is None or found is None:
        return
    if Path(found[1]).resolve() == Path(student_tokenizer[1]).resolve():
        return
    try:
        teacher_ids = build_tokenizer(*found).encode(TOKENIZER_PROBE)
    except TokenizerError as err:  # e.g. no EOS we can identify: not ours to judge
        logger.warning("teacher tokenizer %s not compared with the student's: %s", found[1], err)
        return
    student_ids = build_tokenizer(*student_tokenizer).encode(TOKENIZER_PROBE)
    if teacher_ids != student_ids:
        raise ValueError(
            f"the teacher's tokenizer {found[1]} and the student's {student_tokenizer[1]} "
            "encode the same text to different ids: token-level KD needs one tokenizer"
        )


def load_frozen_gpt(
    ckpt_dir: Path,
    model_cfg: ModelConfig,
    parallel: ParallelConfig,
    precision: PrecisionConfig,
    *,
    placement: TeacherPlacement | None = None,
    use_te: bool | None = None,
) -> SaltGPTModel | None:
    """Build a GPTModel stage with a checkpoint's weights, frozen and in eval mode.

    Collective over all ranks (dist_checkpointing). ``placement`` None means the
    model uses Megatron's global process groups (PP must then be 1); otherwise
    ranks without a stage load nothing and get None.
    """
    model = None
    if placement is None or placement.hosts_teacher:
        config = transformer_config(model_cfg, parallel, precision)
        config.perform_initialization = False  # weights come from the checkpoint
        model = build_gpt_model(
            model_cfg,
            config,
            pre_process=placement.is_first_stage if placement else True,
            post_process=placement.is_last_stage if placement else True,
            pg_collection=placement.pg_collection if placement else None,
            use_te=use_te,
        )
        model.to(current_device())
    state = {"model": model.sharded_state_dict() if model is not None else {}}
    # Replicas (over DP, or TP=1 inside a wider student TP group) carry the
    # student's replica ids, so skip the access validation.
    with reading_checkpoint(ckpt_dir):
        loaded = dist_checkpointing.load(state, str(ckpt_dir), validate_access_integrity=False)
    if model is not None:
        model.load_state_dict(loaded["model"], strict=True)
        model.eval()
        model.requires_grad_(False)
    return model
