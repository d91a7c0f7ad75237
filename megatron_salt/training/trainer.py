"""State and steps of one ``pretrain_salt.py`` run (see :mod:`megatron_salt.training.loop`)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.distributed import (
    DistributedDataParallel,
    DistributedDataParallelConfig,
    finalize_model_grads,
)
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

from megatron_salt.checkpoint_dir import (
    CheckpointError,
    TrainState,
    load_model_config,
    resolve_checkpoint,
)
from megatron_salt.compat import current_device as device
from megatron_salt.config import ModelConfig, ParallelConfig, PrecisionConfig
from megatron_salt.data.token_range import max_token_id
from megatron_salt.distill import check_vocab_compatible
from megatron_salt.model import build_gpt_model, transformer_config
from megatron_salt.monitor import MetricsLog, RunLog, WandbLog
from megatron_salt.teacher import Teacher
from megatron_salt.tokenizer import TokenizerError, build_tokenizer
from megatron_salt.training.arguments import (
    FlagError,
    blend_prefixes,
    kd_config_from_args,
    model_config_from_args,
    wandb_group,
)
from megatron_salt.training.checkpointing import Checkpointer
from megatron_salt.training.data import (
    BatchLayout,
    DatasetTokenizer,
    build_datasets,
    gpt_dataset_config,
    microbatches,
)
from megatron_salt.training.kd_data import EmptySelectionError, build_kd_dataset
from megatron_salt.training.progress import StepResult, TrainLog
from megatron_salt.training.step import ForwardStep, StepTimes, reduce_reports
from megatron_salt.training.validation import Validation

logger = logging.getLogger("megatron_salt")


class _SignalFlag:
    """Remember that a signal arrived; the loop saves and exits at the end of the step."""

    def __init__(self, signum: int) -> None:
        self.received = False
        signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        self.received = True


class Trainer:
    """Builds the student, data, optimizer and (during KD) the teacher; runs the steps."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        tp, pp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size
        parallel_state.initialize_model_parallel(tp, pp)
        torch.manual_seed(args.seed)
        model_parallel_cuda_manual_seed(args.seed)
        self.is_last_stage = parallel_state.is_pipeline_last_stage()
        self.is_logging_rank = dist.get_rank() == dist.get_world_size() - 1

        try:
            tokenizer = build_tokenizer(args.tokenizer_type, args.tokenizer_model)
        except TokenizerError as err:
            raise FlagError(f"pretrain_salt.py: error: {err}") from None
        self.model_cfg = model_config_from_args(args, tokenizer.vocab_size)
        if args.load:
            self.model_cfg = self._agree_with_checkpoint(self.model_cfg)
        self.precision = PrecisionConfig(
            bf16=args.bf16, fp8_format=args.fp8_format, fp8_recipe=args.fp8_recipe
        )
        self.kd = kd_config_from_args(args)
        self._build_student()
        self._build_data(DatasetTokenizer(tokenizer.eod, tokenizer.vocab_size))

        self.checkpoints = Checkpointer(
            args,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            model_cfg=self.model_cfg,
        )
        resumed = self.checkpoints.restore() if args.load else None
        self.state = resumed or TrainState()

        self.teacher: Teacher | None = None
        if self.kd.in_phase(self.state.iteration):
            self.teacher = self._load_teacher()

        self.log = RunLog(
            MetricsLog(
                args.save if self.is_logging_rank else None,
                resumed.iteration if resumed else None,
            ),
            WandbLog(
                project=args.wandb_project if self.is_logging_rank else None,
                name=args.wandb_exp_name,
                group=wandb_group(args),
                tags=["salt" if self.kd.enabled else "baseline"],
                save_dir=args.wandb_save_dir or (f"{args.save}/wandb" if args.save else None),
                config=vars(args),
            ),
            enabled=self.is_logging_rank,
        )
        self.log.write("run", self.state.iteration, self._run_header())
        self.train_log = TrainLog(
            args.log_interval,
            train_iters=args.train_iters,
            global_batch_size=args.global_batch_size,
            seq_length=args.seq_length,
            start_iteration=self.state.iteration,
            kd_enabled=self.kd.enabled,
        )
        self.validation = Validation(
            self.datasets["valid"],
            self.layout,
            eval_iters=args.eval_iters,
            eval_interval=args.eval_interval,
            train_iters=args.train_iters,
            run_log=self.log,
        )
        self.forward_backward = get_forward_backward_func()
        self.times = StepTimes(synchronize=torch.cuda.is_available())
        self._exit_signal = _SignalFlag(signal.SIGTERM) if args.exit_signal_handler else None
        n_params = sum(p.numel() for p in self.model.parameters())
        logger.info(
            "%s: %s params on this rank (%s total), TP=%d PP=%d DP=%d, %d micro-batches/step",
            "student" if self.kd.enabled else "model",
            f"{n_params:,}",
            f"{self.model_cfg.num_parameters():,}",
            tp,
            pp,
            args.data_parallel_size,
            args.num_microbatches,
        )

    def _run_header(self) -> dict[str, Any]:
        """What kind of run this is, for tools/compare_runs.py (one record per launch)."""
        args = self.args
        return {
            "mode": "salt" if self.kd.enabled else "baseline",
            "name": args.wandb_exp_name
            or (os.path.basename(os.path.normpath(args.save)) if args.save else None),
            "train_iters": args.train_iters,
            "global_batch_size": args.global_batch_size,
            "seq_length": args.seq_length,
            "num_parameters": self.model_cfg.num_parameters(),
            "kd_teacher_load": self.kd.teacher_load,
            "kd_iters": self.kd.iters,
            "kd_alpha": self.kd.alpha if self.kd.enabled else None,
            "kd_temperature": self.kd.temperature if self.kd.enabled else None,
            "kd_top_k": self.kd.top_k,
            "kd_schedule": self.kd.schedule if self.kd.enabled else None,
            "kd_data_path": self.kd.data_path,
            "kd_data_selection": self.kd.data_selection,
            "kd_data_selection_by": self.kd.data_selection_by,
        }

    # --- construction -------------------------------------------------------

    def _load_teacher(self) -> Teacher:
        args, kd = self.args, self.kd
        try:
            return Teacher.from_checkpoint(
                kd.teacher_load,
                student_cfg=self.model_cfg,
                tensor_model_parallel_size=kd.teacher_tensor_model_parallel_size,
                pipeline_model_parallel_size=kd.teacher_pipeline_model_parallel_size,
                precision=self.precision,
                micro_batch_size=args.micro_batch_size,
                verify=not args.no_ckpt_verify,
                student_tokenizer=(args.tokenizer_type, args.tokenizer_model),
            )
        except (CheckpointError, ValueError, FileNotFoundError) as err:
            raise FlagError(
                f"pretrain_salt.py: error: --kd-teacher-load {kd.teacher_load}: {err}"
            ) from None

    def _agree_with_checkpoint(self, cfg: ModelConfig) -> ModelConfig:
        """Check the flags against ``--load``'s architecture; take its padded vocabulary.

        The embedding keeps the rows it was trained (or imported) with, so a run at
        another TP, or one starting from a HuggingFace or Megatron-LM checkpoint whose
        padding is not Megatron's for these flags, still loads it.
        """
        args = self.args
        try:
            ckpt = resolve_checkpoint(args.load)
        except CheckpointError:
            return cfg  # nothing there yet: _load starts from scratch or says why not
        try:
            saved = load_model_config(ckpt)
            differences = cfg.architecture_differences(saved)
            if differences:
                raise ValueError(
                    f"the flags describe another model than the checkpoint's (flags vs "
                    f"checkpoint): {'; '.join(differences)}"
                )
            check_vocab_compatible(saved.vocab_size, cfg.vocab_size)
            if saved.trained_padded_vocab_size is not None:
                cfg = dataclasses.replace(
                    cfg, trained_padded_vocab_size=saved.trained_padded_vocab_size
                )
                cfg.padded_vocab_size(args.tensor_model_parallel_size)  # divisible?
        except (ValueError, FileNotFoundError) as err:
            raise FlagError(f"pretrain_salt.py: error: --load {ckpt}: {err}") from None
        return cfg

    def _build_student(self) -> None:
        args = self.args
        parallel = ParallelConfig(
            args.tensor_model_parallel_size, args.pipeline_model_parallel_size
        )
        config = transformer_config(self.model_cfg, parallel, self.precision)
        model = build_gpt_model(
            self.model_cfg,
            config,
            pre_process=parallel_state.is_pipeline_first_stage(),
            post_process=self.is_last_stage,
        )
        model.to(device())
        self.model = DistributedDataParallel(
            config,
            DistributedDataParallelConfig(
                grad_reduce_in_fp32=args.bf16,
                use_distributed_optimizer=args.use_distributed_optimizer,
            ),
            model,
        )
        config.finalize_model_grads_func = finalize_model_grads
        config.no_sync_func = self.model.no_sync
        self.config = config
        self.optimizer = get_megatron_optimizer(
            OptimizerConfig(
                optimizer=args.optimizer,
                lr=args.lr,
                min_lr=args.min_lr,
                weight_decay=args.weight_decay,
                adam_beta1=args.adam_beta1,
                adam_beta2=args.adam_beta2,
                adam_eps=args.adam_eps,
                sgd_momentum=args.sgd_momentum,
                clip_grad=args.clip_grad,
                bf16=args.bf16,
                params_dtype=self.precision.params_dtype,
                use_distributed_optimizer=args.use_distributed_optimizer,
            ),
            [self.model],
        )
        self.scheduler = OptimizerParamScheduler(
            self.optimizer,
            init_lr=0.0 if args.lr_warmup_iters else args.lr,
            max_lr=args.lr,
            min_lr=args.min_lr,
            lr_warmup_steps=args.lr_warmup_iters,
            lr_decay_steps=args.lr_decay_iters,
            lr_decay_style=args.lr_decay_style,
            start_wd=args.weight_decay,
            end_wd=args.weight_decay,
            wd_incr_steps=args.train_iters,
            wd_incr_style="constant",
        )

    def _build_data(self, tokenizer: DatasetTokenizer) -> None:
        args = self.args
        gbs = args.global_batch_size
        self.layout = BatchLayout(
            gbs,
            args.micro_batch_size,
            parallel_state.get_data_parallel_world_size(),
            parallel_state.get_data_parallel_rank(),
        )
        common = dict(
            seq_length=args.seq_length,
            seed=args.seed,
            tokenizer=tokenizer,
            eod_mask_loss=args.eod_mask_loss,
            cache_path=args.data_cache_path,
        )
        kd_steps = self.kd.iters if (self.kd.enabled and self.kd.data_path) else 0
        main_steps = args.train_iters - kd_steps
        eval_samples = args.eval_iters * gbs if args.eval_iters else 0
        self._check_token_range(tokenizer.vocab_size, kd_data=bool(kd_steps))
        try:
            train, valid, _ = build_datasets(
                gpt_dataset_config(data_path=args.data_path, split=args.split, **common),
                [max(main_steps, 1) * gbs, eval_samples, 0],
            )
            self.datasets = {"train": train, "valid": valid}
            needed = {"train": max(main_steps, 1) * gbs, "valid": eval_samples}
            if kd_steps:
                self.datasets["kd"] = build_kd_dataset(
                    self.kd, num_samples=kd_steps * gbs, split=args.split, **common
                )
                needed["kd"] = kd_steps * gbs
        except EmptySelectionError as err:
            raise FlagError(f"pretrain_salt.py: error: --kd-data-selection: {err}") from None
        except Exception as err:  # Megatron-Core re-raises an OSError as a bare Exception
            cause = err if isinstance(err, OSError) else err.__cause__
            if not isinstance(cause, OSError):
                raise
            where = (
                f"--data-cache-path {args.data_cache_path}"
                if args.data_cache_path
                else "--data-cache-path: the dataset index cache goes next to the data by default"
            )
            raise FlagError(
                f"pretrain_salt.py: error: {where}, and {cause.filename} cannot be written "
                f"({cause.strerror}); pass --data-cache-path DIR on a writable disk"
            ) from None
        # Fail now, not hours in: e.g. an unweighted multi-prefix blend is built
        # for one epoch of each prefix only.
        for name, samples in needed.items():
            have = len(self.datasets[name]) if self.datasets[name] is not None else 0
            if have < samples:
                flag = "--kd-data-path" if name == "kd" else f"--data-path/--split {args.split}"
                raise FlagError(
                    f"pretrain_salt.py: error: {flag}: the {name} data has {have:,} samples of "
                    f"{args.seq_length} tokens, the run needs {samples:,} (pass blend weights, "
                    "more data, or fewer iterations)"
                )

    def _check_token_range(self, vocab_size: int, kd_data: bool) -> None:
        """Every token id of the data must exist in the tokenizer (scanned once, cached)."""
        from megatron.core.datasets.indexed_dataset import IndexedDataset

        args = self.args
        flags = [("--data-path", args.data_path)]
        if kd_data:
            flags.append(("--kd-data-path", self.kd.data_path))
        checks = [(flag, p) for flag, blend in flags for p in blend_prefixes(blend)]
        # One rank scans (the first start-up reads each .bin once), every rank learns.
        tops = torch.full((len(checks),), -1, dtype=torch.int64, device=device())
        if dist.get_rank() == 0:
            for i, (_, prefix) in enumerate(checks):
                dtype = IndexedDataset(prefix, mmap=True).index.dtype
                tops[i] = max_token_id(prefix, dtype, args.data_cache_path)
        dist.broadcast(tops, src=0)
        for (flag, prefix), top in zip(checks, tops.tolist(), strict=True):
            if top >= vocab_size:
                raise FlagError(
                    f"pretrain_salt.py: error: {flag}: {prefix}.bin holds token id {top}, "
                    f"but --tokenizer-model {args.tokenizer_model} has {vocab_size} tokens "
                    "(was the data tokenized with another tokenizer?)"
                )

    # --- the loop -----------------------------------------------------------

    def train(self) -> dict[str, Any]:
        """Step until ``--train-iters`` (or an early exit); each periodic job decides when."""
        args, state = self.args, self.state
        last_eval = None
        while state.iteration < args.train_iters:
            if self.teacher is not None and not self.kd.in_phase(state.iteration):
                self._release_teacher()
            self.train_log.add(self.train_step())
            if self.train_log.due(state.iteration):
                console, record = self.train_log.line(
                    state.iteration,
                    learning_rate=self.optimizer.param_groups[0]["lr"],
                    train_time_s=state.train_time_s,
                    with_teacher=self.teacher is not None,
                )
                self.log.write("train", state.iteration, record, console=console)
            if self.validation.due(state.iteration):
                last_eval = self.validation.run(
                    self.model,
                    self._run_schedule,
                    iteration=state.iteration,
                    train_time_s=state.train_time_s,
                )
            exit_reason = self._exit_reason(state.iteration)
            if self.checkpoints.due(state.iteration, exiting=exit_reason is not None):
                self.checkpoints.save(state)
            if exit_reason is not None:
                logger.info("exiting at iteration %d (%s)", state.iteration, exit_reason)
                break
        return {
            "iteration": state.iteration,
            "val_loss": last_eval,
            "train_time_s": state.train_time_s,
            "kd_released_at": state.kd_released_at,
        }

    def train_step(self) -> StepResult:
        """One optimizer step: the micro-batches through the schedule, then the update."""
        step = self.state.iteration
        weight = self.kd.weight(step)
        forward_step = ForwardStep(times=self.times)
        if self.teacher is not None:  # the KD phase
            forward_step = ForwardStep(
                teacher=self.teacher,
                kd=self.kd,
                vocab_size=self.model_cfg.vocab_size,
                weight=weight,
                # the teacher's loss and agreement, on the step that ends a log interval
                measure=self.train_log.due(step + 1),
                times=self.times,
            )
        batches = self._next_batches(step)

        start = self.times.now()
        self.times.teacher_s = 0.0
        self.model.zero_grad_buffer()
        self.optimizer.zero_grad()
        reports = self._run_schedule(forward_step, batches, forward_only=False)
        if self.teacher is not None:
            self.teacher.finish_step()
        update_ok, grad_norm, _ = self.optimizer.step()
        if update_ok:
            self.scheduler.step(increment=1)
        step_time = self.times.now() - start
        self.state.train_time_s += step_time
        self.state.iteration += 1
        return StepResult(
            losses=reduce_reports(reports, parallel_state.get_data_parallel_group())
            if self.is_last_stage
            else {},
            step_time_s=step_time,
            teacher_time_s=self.times.teacher_s,
            grad_norm=grad_norm,
            update_ok=update_ok,
            kd_weight=weight,
        )

    def _next_batches(self, step: int) -> list[dict[str, torch.Tensor]]:
        source = "kd" if (self.kd.in_phase(step) and "kd" in self.datasets) else "train"
        consumed = self.state.consumed_samples
        batches = microbatches(
            self.datasets[source],
            self.layout,
            consumed[source] // self.layout.global_batch_size,
            device(),
        )
        consumed[source] += self.layout.global_batch_size
        return batches

    def _run_schedule(
        self, forward_step: ForwardStep, batches: list, *, forward_only: bool
    ) -> list[dict]:
        """One step's micro-batches through Megatron-Core's pipeline schedule."""
        return self.forward_backward(
            forward_step_func=forward_step,
            data_iterator=iter(batches),
            model=[self.model],
            num_microbatches=self.layout.num_microbatches,
            seq_length=self.args.seq_length,
            micro_batch_size=self.args.micro_batch_size,
            forward_only=forward_only,
        )

    def _exit_reason(self, iteration: int) -> str | None:
        """Why the run stops after ``iteration`` before ``--train-iters``, if it does.

        With --exit-signal-handler: did any rank get SIGTERM? (one all-reduce per step)
        """
        if self._exit_signal is not None:
            flag = torch.tensor([float(self._exit_signal.received)], device=device())
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if flag.item():
                return "SIGTERM, --exit-signal-handler"
        interval = self.args.exit_interval
        if interval is not None and iteration % interval == 0:
            return "--exit-interval"
        return None

    def _release_teacher(self) -> None:
        freed = self.teacher.release()
        self.teacher = None
        self.state.kd_released_at = self.state.iteration
        freed_all = torch.tensor([freed], dtype=torch.float64, device=device())
        dist.all_reduce(freed_all)
        logger.info(
            "KD phase ended at iteration %d: teacher released (%.1f MiB of teacher weights on "
            "this rank, %.1f MiB over all ranks)",
            self.state.iteration,
            freed / 2**20,
            freed_all.item() / 2**20,
        )
        self.log.write(
            "event",
            self.state.iteration,
            {"event": "kd_end", "teacher bytes freed": int(freed_all.item())},
        )

    def close(self) -> None:
        if self.teacher is not None:
            self.teacher.release()
            self.teacher = None
        self.log.finish()
        parallel_state.destroy_model_parallel()
