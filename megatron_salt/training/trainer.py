"""State and steps of one ``pretrain_salt.py`` run (see :mod:`megatron_salt.training.loop`)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import signal
import time
from collections import defaultdict
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

from megatron_salt.checkpoint_dir import load_model_config
from megatron_salt.compat import current_device as device
from megatron_salt.config import ModelConfig, ParallelConfig, PrecisionConfig
from megatron_salt.data.token_range import max_token_id
from megatron_salt.distill import check_vocab_compatible, kd_weight
from megatron_salt.model import build_gpt_model, transformer_config
from megatron_salt.monitor import MetricsLog, WandbLog, console_line, format_eta
from megatron_salt.teacher import Teacher
from megatron_salt.tokenizer import TokenizerError, build_tokenizer
from megatron_salt.training import checkpointing
from megatron_salt.training.arguments import (
    FlagError,
    blend_prefixes,
    kd_config_from_args,
    model_config_from_args,
    wandb_group,
)
from megatron_salt.training.checkpointing import CheckpointError
from megatron_salt.training.data import (
    BatchLayout,
    DatasetTokenizer,
    build_datasets,
    gpt_dataset_config,
    microbatches,
)
from megatron_salt.training.kd_data import EmptySelectionError, build_kd_dataset
from megatron_salt.training.step import ForwardStep, KDStepConfig, StepTimes, reduce_reports

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

        self.iteration = 0
        self.consumed = {"train": 0, "kd": 0}
        self.train_time_s = 0.0
        self.kd_released_at: int | None = None
        resumed = self._load() if args.load else None

        self.teacher: Teacher | None = None
        if self.kd.enabled and self.iteration < self.kd.iters:
            try:
                self.teacher = Teacher.from_checkpoint(
                    self.kd.teacher_load,
                    student_cfg=self.model_cfg,
                    tensor_model_parallel_size=self.kd.teacher_tensor_model_parallel_size,
                    pipeline_model_parallel_size=self.kd.teacher_pipeline_model_parallel_size,
                    precision=self.precision,
                    micro_batch_size=args.micro_batch_size,
                    verify=not args.no_ckpt_verify,
                    student_tokenizer=(args.tokenizer_type, args.tokenizer_model),
                )
            except (CheckpointError, ValueError, FileNotFoundError) as err:
                raise FlagError(
                    f"pretrain_salt.py: error: --kd-teacher-load {self.kd.teacher_load}: {err}"
                ) from None

        self.metrics = MetricsLog(args.save if self.is_logging_rank else None, resumed)
        if self.is_logging_rank:
            self.metrics.write("run", self.iteration, self._run_header())
        self.wandb = WandbLog(
            project=args.wandb_project if self.is_logging_rank else None,
            name=args.wandb_exp_name,
            group=wandb_group(args),
            tags=["salt" if self.kd.enabled else "baseline"],
            save_dir=args.wandb_save_dir or (f"{args.save}/wandb" if args.save else None),
            config=vars(args),
        )
        self.forward_backward = get_forward_backward_func()
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

    def _agree_with_checkpoint(self, cfg: ModelConfig) -> ModelConfig:
        """Check the flags against ``--load``'s architecture; take its padded vocabulary.

        The embedding keeps the rows it was trained (or imported) with, so a run at
        another TP, or one starting from a HuggingFace or Megatron-LM checkpoint whose
        padding is not Megatron's for these flags, still loads it.
        """
        args = self.args
        try:
            ckpt = checkpointing.resolve_checkpoint(args.load)
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

    def _load(self) -> int | None:
        """Resume from ``--load`` (or take its weights, with ``--finetune``)."""
        args = self.args
        try:
            if checkpointing.latest_iteration(args.load) is None:
                if args.finetune:
                    raise CheckpointError(f"{args.load} holds no checkpoint to finetune from")
                logger.info("no checkpoint in %s yet: starting from scratch", args.load)
                return None
            opened = checkpointing.open_checkpoint(
                args.load,
                verify=not args.no_ckpt_verify,
                fallback=args.ckpt_load_fallback,
                log=logger.warning,
            )
            state = checkpointing.load_checkpoint(
                opened.path,
                model=self.model,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                load_optimizer=not (args.no_load_optim or args.finetune),
                load_rng=not (args.no_load_rng or args.finetune),
            )
        except CheckpointError as err:
            raise FlagError(f"pretrain_salt.py: error: --load: {err}") from None
        if args.finetune:
            return None
        self.iteration = state["iteration"]
        self.consumed = dict(state["consumed_samples"])
        self.train_time_s = state["train_time_s"]
        self.kd_released_at = state.get("kd_released_at")
        return self.iteration

    # --- the loop -----------------------------------------------------------

    def _in_kd_phase(self, step: int) -> bool:
        return self.kd.enabled and step < self.kd.iters

    def _next_batches(self, step: int) -> list[dict[str, torch.Tensor]]:
        source = "kd" if (self._in_kd_phase(step) and "kd" in self.datasets) else "train"
        batches = microbatches(
            self.datasets[source],
            self.layout,
            self.consumed[source] // self.layout.global_batch_size,
            device(),
        )
        self.consumed[source] += self.layout.global_batch_size
        return batches

    def train(self) -> dict[str, Any]:
        args = self.args
        interval: dict[str, list[float]] = defaultdict(list)
        times = StepTimes(synchronize=torch.cuda.is_available())
        start_iteration = self.iteration
        last_eval = None
        summary: dict[str, Any] = {}
        while self.iteration < args.train_iters:
            step = self.iteration
            if self.teacher is not None and not self._in_kd_phase(step):
                self._release_teacher()
            weight = (
                kd_weight(
                    step, alpha=self.kd.alpha, kd_iters=self.kd.iters, schedule=self.kd.schedule
                )
                if self._in_kd_phase(step)
                else 0.0
            )
            measure = (step + 1) % args.log_interval == 0
            forward_step = ForwardStep(times=times)
            if self.teacher is not None:
                forward_step.kd = KDStepConfig(
                    teacher=self.teacher,
                    weight=weight,
                    temperature=self.kd.temperature,
                    top_k=self.kd.top_k,
                    vocab_size=self.model_cfg.vocab_size,
                    measure=measure,
                )
            batches = self._next_batches(step)

            start = times.now()
            times.teacher_s = times.kd_loss_s = 0.0
            self.model.zero_grad_buffer()
            self.optimizer.zero_grad()
            reports = self._run_schedule(forward_step, batches, forward_only=False)
            if self.teacher is not None:
                self.teacher.finish_step()
            update_ok, grad_norm, _ = self.optimizer.step()
            if update_ok:
                self.scheduler.step(increment=1)
            step_time = times.now() - start
            self.train_time_s += step_time
            self.iteration += 1

            values = (
                reduce_reports(reports, parallel_state.get_data_parallel_group())
                if self.is_last_stage
                else {}
            )
            for name, value in values.items():
                interval[name].append(value)
            interval["step time"].append(step_time)
            interval["teacher time"].append(times.teacher_s)
            interval["grad norm"].append(grad_norm if grad_norm is not None else float("nan"))
            interval["skipped"].append(0.0 if update_ok else 1.0)
            interval["kd weight"].append(weight)

            if self.iteration % args.log_interval == 0:
                self._log_interval(interval, start_iteration)
                interval.clear()
            if self.iteration % args.eval_interval == 0 or self.iteration == args.train_iters:
                if args.eval_iters:
                    last_eval = self.evaluate()
            signalled = self._signal_received()
            exiting = signalled or (
                args.exit_interval is not None and self.iteration % args.exit_interval == 0
            )
            if args.save and (
                (args.save_interval and self.iteration % args.save_interval == 0)
                or self.iteration == args.train_iters
                or exiting
            ):
                self.save()
            if exiting:
                reason = "SIGTERM, --exit-signal-handler" if signalled else "--exit-interval"
                logger.info("exiting at iteration %d (%s)", self.iteration, reason)
                break
        summary.update(
            iteration=self.iteration,
            val_loss=last_eval,
            train_time_s=self.train_time_s,
            kd_released_at=self.kd_released_at,
        )
        return summary

    def _signal_received(self) -> bool:
        """With --exit-signal-handler: did any rank get SIGTERM? (one all-reduce per step)"""
        if self._exit_signal is None:
            return False
        flag = torch.tensor([float(self._exit_signal.received)], device=device())
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def _log_interval(self, interval: dict[str, list[float]], start_iteration: int) -> None:
        args = self.args

        def mean(name: str) -> float | None:
            vals = [v for v in interval.get(name, []) if not math.isnan(v)]
            return sum(vals) / len(vals) if vals else None

        step_time = mean("step time")
        tokens = args.global_batch_size * args.seq_length
        done = self.iteration - start_iteration
        eta = step_time * (args.train_iters - self.iteration) if step_time else 0.0
        teacher_share = (
            (sum(interval["teacher time"]) / sum(interval["step time"])) if self.teacher else None
        )
        values: dict[str, Any] = {
            "consumed samples": self.iteration * args.global_batch_size,
            "elapsed time per iteration (ms)": step_time * 1000,
            "tokens/s": tokens / step_time,
            "learning rate": self.optimizer.param_groups[0]["lr"],
            "global batch size": args.global_batch_size,
            "lm loss": mean("lm loss"),
            "kd loss": mean("kd loss"),
            "kd weight": mean("kd weight") if self.kd.enabled else None,
            "total loss": mean("total loss"),
            "teacher lm loss": mean("teacher lm loss"),
            "top1 agreement": mean("top1 agreement"),
            "grad norm": mean("grad norm"),
            "teacher time share": teacher_share,
            "skipped iterations": int(sum(interval["skipped"])),
            "eta": format_eta(eta),
        }
        if self.is_logging_rank:
            print(console_line(self.iteration, args.train_iters, values), flush=True)
            record = {k: v for k, v in values.items() if k != "eta" and v is not None}
            record["train time (s)"] = self.train_time_s
            record["iterations this run"] = done
            self.metrics.write("train", self.iteration, record)
            self.wandb.log({f"train/{k}": v for k, v in record.items()}, step=self.iteration)

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

    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Validation LM loss (no KD) on the same ``--eval-iters`` batches every time."""
        args = self.args
        self.model.eval()
        reports = []
        for step in range(args.eval_iters):
            batches = microbatches(self.datasets["valid"], self.layout, step, device())
            reports += self._run_schedule(ForwardStep(), batches, forward_only=True)
        self.model.train()
        values = (
            reduce_reports(reports, parallel_state.get_data_parallel_group())
            if self.is_last_stage
            else {}
        )
        loss = values.get("lm loss")
        if self.is_logging_rank:
            ppl = math.exp(min(loss, 30.0))
            print(
                f" validation loss at iteration {self.iteration} | lm loss: {loss:.6E} "
                f"| lm loss PPL: {ppl:.6E} |",
                flush=True,
            )
            record = {"lm loss": loss, "train time (s)": self.train_time_s}
            self.metrics.write("eval", self.iteration, record)
            self.wandb.log({"valid/lm loss": loss}, step=self.iteration)
        return loss

    def _release_teacher(self) -> None:
        freed = self.teacher.release()
        self.teacher = None
        self.kd_released_at = self.iteration
        freed_all = torch.tensor([freed], dtype=torch.float64, device=device())
        dist.all_reduce(freed_all)
        message = (
            f"KD phase ended at iteration {self.iteration}: teacher released "
            f"({freed / 2**20:.1f} MiB of teacher weights on this rank, "
            f"{freed_all.item() / 2**20:.1f} MiB over all ranks)"
        )
        logger.info(message)
        if self.is_logging_rank:
            self.metrics.write(
                "event",
                self.iteration,
                {"event": "kd_end", "teacher bytes freed": int(freed_all.item())},
            )
            self.wandb.log({"kd/teacher_released": 1}, step=self.iteration)

    def save(self) -> None:
        start = time.perf_counter()
        # Ranks time their steps independently; the checkpoint keeps the slowest.
        elapsed = torch.tensor([self.train_time_s], dtype=torch.float64, device=device())
        dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
        self.train_time_s = elapsed.item()
        try:
            path = self._save_checkpoint()
        except CheckpointError as err:
            raise FlagError(f"pretrain_salt.py: error: --save {self.args.save}: {err}") from None
        logger.info("saved checkpoint %s in %.1fs", path, time.perf_counter() - start)

    def _save_checkpoint(self):
        return checkpointing.save_checkpoint(
            self.args.save,
            self.iteration,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            train_state={
                "iteration": self.iteration,
                "consumed_samples": dict(self.consumed),
                "train_time_s": self.train_time_s,
                "kd_released_at": self.kd_released_at,
            },
            model_cfg=dataclasses.replace(
                self.model_cfg,
                trained_padded_vocab_size=self.model_cfg.padded_vocab_size(
                    self.args.tensor_model_parallel_size
                ),
            ),
            run_args=vars(self.args),
        )

    def close(self) -> None:
        if self.teacher is not None:
            self.teacher.release()
            self.teacher = None
        self.wandb.finish()
        parallel_state.destroy_model_parallel()
