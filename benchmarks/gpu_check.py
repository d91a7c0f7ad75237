#!/usr/bin/env python
"""GPU check: what only a GPU node can show, in one command of at most ~8 minutes.

    python benchmarks/gpu_check.py --out DIR [--budget-s 450] [--peak-tflops N]
    python benchmarks/gpu_check.py --out DIR --dry-run     # same code paths, tiny, on CPU

Four sections, each guarded (a failure is recorded in the JSON and the next section runs),
with the results rewritten to ``DIR/gpu_check.{json,md}`` after every section:

``kd_loss_accuracy``
    ``vocab_parallel_kd_loss`` and the fused ``vocab_parallel_salt_loss`` (CE + KD) on the
    device in fp32 and bf16, forward value and student gradient against a float64
    reference written here (full softmax over the unpadded vocabulary, teacher top-k by
    value). Tolerances are relative norm errors ``||ours - ref|| / ||ref||``; see
    ``TOLERANCES``.
``kd_loss_benchmark``
    Peak memory (``torch.cuda.max_memory_allocated`` above the inputs, reset between
    implementations) and time (CUDA events around forward + backward, after warm-up;
    median) of the KD term (ours, naive torch, ModelOpt's ``LogitsKLLoss`` when it imports)
    and of CE + KD (ours fused, ours + Megatron-Core's CE), at ``[8192 tokens, 50304]`` and
    ``[8192, 151936]``. The implementations are ``benchmarks/kd_loss.py``'s.
``salt_step``
    ``pretrain_salt.py`` baseline and SALT runs, one rank over NCCL, bf16, a 354M student
    and a 124M teacher at sequence 2048, interleaved (A B A B). The teacher checkpoint is
    written by a one-step ``pretrain_salt.py`` run (random weights: quality does not change
    its cost). Data are uniform random token ids in real ``.bin/.idx`` files with a 50257-id
    word-level tokenizer (padded to 50304). Reports the median step time, tokens/s, model
    TFLOP/s and MFU (``megatron_salt/flops.py``; peak from ``--peak-tflops`` or the device
    name), the teacher's share of the SALT step, and SALT/baseline against its FLOP-ideal
    ``1 + F_teacher_fwd / F_student_fwd+bwd``.
``fp8``
    Without Transformer Engine: says FP8 is not measured. With it: the same pair of runs
    with ``--fp8-format hybrid`` (never exercised by the session that wrote this).

``--dry-run`` hides any GPU and runs all of it at tiny sizes on CPU over gloo; the test
suite runs it (tests/test_gpu_check.py), so a device lease is not spent on a crash.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.gpu_check_report import (  # noqa: E402
    render_markdown,
    render_summary,
    write_report,
)

SECTIONS = ("kd_loss_accuracy", "kd_loss_benchmark", "salt_step", "fp8")
KD_IMPLS = ("naive", "ours", "modelopt")
CE_KD_IMPLS = ("ours-kd+megatron-ce", "ours-fused")

# Dense (no sparsity) bf16 tensor-core peak, TFLOP/s, from the vendors' datasheets (SXM parts
# unless named). First substring of the device name that matches wins.
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H200", 989.0),
    ("H100", 989.0),
    ("H800", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("B200", 2250.0),
)

# ||ours - ref|| / ||ref|| against float64. The loss is fp32 arithmetic on inputs both sides
# read identically (bf16 inputs are exact in float64), so fp32 accuracy in either dtype. The
# gradient comes back in the input dtype: bf16 adds one rounding (unit roundoff 2**-9), so
# 2**-8 leaves a factor of two; fp32 keeps fp32 accuracy.
TOLERANCES = {
    "loss_rel": {"fp32": 1e-5, "bf16": 1e-5},
    "grad_rel": {"fp32": 1e-5, "bf16": 2.0**-8},
}
# (temperature, teacher top-k) cases of the accuracy check; padding is always on.
ACCURACY_CASES = ((1.0, None), (2.0, 64))
PADDING = 47  # padded columns past the true vocab (GPT-2's 50257 in 50304)


@dataclass(frozen=True)
class Plan:
    """Sizes of one run of the check: the GPU's, or the dry run's."""

    accuracy_tokens: int
    vocabs: tuple[int, ...]  # padded vocab sizes of the loss sections
    bench_tokens: int
    bench_dtypes: tuple[str, ...]
    warmup: int
    repeats: int
    case_budget_s: float  # time per benchmark case, bounding the repeats
    student: tuple[str, ...]
    teacher: tuple[str, ...]
    vocab: int  # the tokenizer's vocab for the training runs
    seq_length: int
    micro_batch: int
    global_batch: int
    train_iters: int
    log_interval: int
    ab_pairs: int
    corpus_tokens: int
    backend: str
    step_reserve_s: float  # budget kept for salt_step while the loss benchmark runs


GPU_PLAN = Plan(
    accuracy_tokens=1024,
    vocabs=(50304, 151936),
    bench_tokens=8192,
    bench_dtypes=("bf16", "fp32"),
    warmup=2,
    repeats=10,
    case_budget_s=4.0,
    # 354M: GPT-3 Medium's shape; 124M: GPT-3 Small's (vocab 50257 -> 50304 padded)
    student=("--num-layers", "24", "--hidden-size", "1024", "--num-attention-heads", "16"),
    teacher=("--num-layers", "12", "--hidden-size", "768", "--num-attention-heads", "12"),
    vocab=50257,
    seq_length=2048,
    micro_batch=4,
    global_batch=16,
    train_iters=30,
    log_interval=5,
    ab_pairs=2,
    corpus_tokens=4_000_000,
    backend="nccl",
    step_reserve_s=220.0,
)

DRY_RUN_PLAN = Plan(
    accuracy_tokens=24,
    vocabs=(300,),
    bench_tokens=64,
    bench_dtypes=("bf16", "fp32"),
    warmup=1,
    repeats=2,
    case_budget_s=1.0,
    student=("--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4"),
    teacher=("--num-layers", "1", "--hidden-size", "32", "--num-attention-heads", "4"),
    vocab=300,
    seq_length=32,
    micro_batch=2,
    global_batch=4,
    train_iters=4,
    log_interval=2,
    ab_pairs=1,
    corpus_tokens=20_000,
    backend="gloo",
    step_reserve_s=0.0,
)


class Clock:
    """Elapsed time, the budget's deadline, and progress lines."""

    def __init__(self, budget_s: float) -> None:
        self.start = time.monotonic()
        self.budget_s = budget_s

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def remaining(self) -> float:
        return self.budget_s - self.elapsed()

    def log(self, message: str) -> None:
        print(f"[gpu_check {self.elapsed():6.1f}s] {message}", flush=True)


class Skipped(Exception):
    """A section (or the rest of one) cannot run here; the message says why."""


# ----------------------------------------------------------------------------- set-up


def peak_tflops(device_name: str | None, flag: float | None) -> tuple[float | None, str]:
    """The bf16 dense peak for MFU and where it came from."""
    if flag is not None:
        return flag, "--peak-tflops"
    if device_name is None:
        return None, "no GPU: MFU needs --peak-tflops"
    for key, value in PEAK_BF16_TFLOPS:
        if key in device_name:
            return value, f"datasheet bf16 dense peak for {key}"
    return None, f"unknown device {device_name!r}: MFU needs --peak-tflops"


def machine_info() -> dict[str, Any]:
    import megatron.core
    import torch

    from megatron_salt.compat import have_apex, have_transformer_engine

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "megatron_core": getattr(megatron.core, "__version__", "unknown"),
        "cpu_count": os.cpu_count(),
        "device": "cpu",
        "transformer_engine": have_transformer_engine(),
        "apex": have_apex(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        nccl = torch.cuda.nccl.version()  # a tuple in recent torch, an int in old ones
        info.update(
            device=torch.cuda.get_device_name(0),
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
            nccl=".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl),
        )
    return info


def init_single_rank(backend: str) -> None:
    """A one-rank process group and Megatron's parallel state (TP=PP=1) in this process:
    Megatron-Core's CE and ModelOpt's loss read the TP group from it."""
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state

    from megatron_salt.compat import apply_cpu_patches

    apply_cpu_patches()
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(0)
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(1, 1)


def device_name() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def logits(tokens: int, vocab: int, dtype, seed: int):
    """Student and teacher logits ``[tokens, 1, vocab]`` on the device (teacher correlated
    with the student), made in row slices so no full-size fp32 temporary exists."""
    import torch

    device = device_name()
    gen = torch.Generator(device=device).manual_seed(seed)
    student = torch.empty(tokens, 1, vocab, dtype=dtype, device=device)
    teacher = torch.empty_like(student)
    rows = max(1, (1 << 24) // vocab)
    for start in range(0, tokens, rows):
        stop = min(start + rows, tokens)
        noise = torch.randn(stop - start, 1, vocab, generator=gen, device=device)
        student[start:stop] = 2.5 * noise
        noise.mul_(1.5).add_(torch.randn(noise.shape, generator=gen, device=device), alpha=2.0)
        teacher[start:stop] = noise
    return student, teacher


# ----------------------------------------------------------------------------- accuracy


def reference_losses(student, teacher, labels, *, vocab_size, temperature, top_k):
    """float64 per-token CE and KD, and the float64 student they are differentiable in.

    Written from the definitions, independently of the implementation: full softmax over
    the first ``vocab_size`` columns; the teacher keeps the logits >= its k-th largest.
    """
    import torch

    s = student.detach().double().requires_grad_()
    z, t = s[..., :vocab_size], teacher.double()[..., :vocab_size]
    keep = torch.ones_like(t, dtype=torch.bool)
    if top_k is not None:
        keep = t >= t.topk(top_k, dim=-1).values[..., -1:]
    log_pt = torch.log_softmax((t / temperature).masked_fill(~keep, float("-inf")), dim=-1)
    log_ps = torch.log_softmax(z / temperature, dim=-1)
    kd = torch.where(keep, log_pt.exp() * (log_pt - log_ps), 0.0).sum(dim=-1)
    ce = -torch.log_softmax(z, dim=-1).gather(-1, labels[..., None]).squeeze(-1)
    return s, ce, kd


def _rel_err(ours, ref) -> float:
    ours, ref = ours.detach().double(), ref.detach().double()
    if not bool(ours.isfinite().all()):
        return float("inf")
    return float((ours - ref).norm() / ref.norm().clamp_min(1e-300))


def check_accuracy(
    which: str, dtype_name: str, vocab: int, temperature: float, top_k, tokens: int, seed: int,
    kd_fn=None, salt_fn=None,
) -> dict[str, Any]:  # fmt: skip
    """One case: ours (``which`` = "kd" or "ce+kd") vs the float64 reference.

    ``kd_fn`` / ``salt_fn`` default to the library's functions (tests pass broken ones to
    show the check fails).
    """
    import torch

    from megatron_salt.distill import vocab_parallel_kd_loss, vocab_parallel_salt_loss

    kd_fn = kd_fn or vocab_parallel_kd_loss
    salt_fn = salt_fn or vocab_parallel_salt_loss
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    vocab_size = vocab - PADDING
    student, teacher = logits(tokens, vocab, dtype, seed)
    # Padded columns: garbage that must never be read.
    student[..., vocab_size:] = 1e4
    teacher[..., vocab_size:] = float("nan")
    gen = torch.Generator(device=student.device).manual_seed(seed + 1)
    labels = torch.randint(0, vocab_size, (tokens, 1), generator=gen, device=student.device)
    w_ce, w_kd = torch.randn(2, tokens, 1, generator=gen, device=student.device)
    kwargs = dict(vocab_size=vocab_size, temperature=temperature, top_k=top_k)

    student.requires_grad_()
    if which == "kd":
        kd = kd_fn(student, teacher, **kwargs)
        outputs = {"kd": kd}
        objective = (kd * w_kd).sum()
    else:
        ce, kd = salt_fn(student, teacher, labels, **kwargs)
        outputs = {"ce": ce, "kd": kd}
        objective = (ce * w_ce + kd * w_kd).sum()
    (grad,) = torch.autograd.grad(objective, student)

    s, ref_ce, ref_kd = reference_losses(student, teacher, labels, **kwargs)
    refs = {"ce": ref_ce, "kd": ref_kd}
    ref_objective = (ref_kd * w_kd.double()).sum()
    if which != "kd":
        ref_objective = ref_objective + (ref_ce * w_ce.double()).sum()
    (ref_grad,) = torch.autograd.grad(ref_objective, s)

    loss_err = max(_rel_err(out.detach(), refs[name]) for name, out in outputs.items())
    grad_err = _rel_err(grad, ref_grad)
    loss_tol, grad_tol = TOLERANCES["loss_rel"][dtype_name], TOLERANCES["grad_rel"][dtype_name]
    return {
        "loss": which,
        "dtype": dtype_name,
        "vocab": vocab,
        "vocab_size": vocab_size,
        "tokens": tokens,
        "temperature": temperature,
        "top_k": top_k,
        "loss_rel_err": loss_err,
        "grad_rel_err": grad_err,
        "grad_dtype_ok": grad.dtype == dtype,
        "loss_tol": loss_tol,
        "grad_tol": grad_tol,
        "passed": loss_err <= loss_tol and grad_err <= grad_tol and grad.dtype == dtype,
    }


def section_accuracy(plan: Plan, clock: Clock) -> dict[str, Any]:
    """Both losses x dtypes x (T, top-k) cases x vocab sizes against float64."""
    checks = []
    seed = 100
    for vocab in plan.vocabs:
        for dtype in ("fp32", "bf16"):
            for temperature, top_k in ACCURACY_CASES:
                for which in ("kd", "ce+kd"):
                    seed += 1
                    checks.append(
                        check_accuracy(
                            which, dtype, vocab, temperature, top_k, plan.accuracy_tokens, seed
                        )
                    )
        clock.log(f"kd_loss_accuracy: V={vocab} done ({len(checks)} checks so far)")
    failed = [c for c in checks if not c["passed"]]
    return {
        "status": "ok" if not failed else "failed",
        "passed": not failed,
        "tolerances": TOLERANCES,
        "checks": checks,
    }


# ----------------------------------------------------------------------------- loss benchmark


def modelopt_status() -> str | None:
    """None when ModelOpt's Megatron plugin imports, else the reason it does not."""
    try:
        import modelopt.torch.distill.plugins.megatron  # noqa: F401
    except Exception as err:  # noqa: BLE001 - any import failure means "not available"
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return None


def measure_impl(fn, student, teacher, labels, plan: Plan) -> dict[str, Any]:
    """Forward + backward of ``fn``: median time after warm-up, peak memory above the inputs."""
    import torch

    from benchmarks.kd_loss import CpuMemory, CudaMemory

    cuda = student.is_cuda

    def once(timed: list | None):
        student.grad = None
        if cuda:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
        else:
            began = time.perf_counter()
        loss, full = fn(student, teacher, labels)
        loss.sum().backward()
        if cuda:
            end.record()
        if timed is not None:
            timed.append((begin, end) if cuda else time.perf_counter() - began)
        return float(full.detach().double().sum())

    first = time.perf_counter()
    for _ in range(plan.warmup):
        once(None)
    if cuda:
        torch.cuda.synchronize()
    per_iter = (time.perf_counter() - first) / plan.warmup
    repeats = max(3, min(plan.repeats, int(plan.case_budget_s / max(per_iter, 1e-6))))
    student.grad = None
    memory = CudaMemory() if cuda else CpuMemory()
    memory.start()
    timed: list = []
    loss_sum = None
    for _ in range(repeats):
        loss_sum = once(timed)
    if cuda:
        torch.cuda.synchronize()
        times_ms = [begin.elapsed_time(end) for begin, end in timed]
    else:
        times_ms = [t * 1000 for t in timed]
    peak = memory.peak_extra()
    student.grad = None
    return {
        "median_ms": statistics.median(times_ms),
        "min_ms": min(times_ms),
        "repeats": repeats,
        "peak_extra_mib": peak / 2**20,
        "loss_sum": loss_sum,
    }


def section_benchmark(plan: Plan, clock: Clock, reserve_s: float) -> dict[str, Any]:
    """Every implementation on the same inputs per (V, dtype); ``reserve_s`` is left over."""
    import gc

    import torch

    from benchmarks.kd_loss import loss_fn

    modelopt_missing = modelopt_status()
    if modelopt_missing:
        clock.log(f"ModelOpt not importable ({modelopt_missing}): LogitsKLLoss not measured")
    impls = [i for i in KD_IMPLS + CE_KD_IMPLS if not (i == "modelopt" and modelopt_missing)]
    cases = []
    for vocab in plan.vocabs:
        for dtype_name in plan.bench_dtypes:
            dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
            student, teacher = logits(plan.bench_tokens, vocab, dtype, seed=vocab)
            gen = torch.Generator(device=student.device).manual_seed(7)
            labels = torch.randint(
                0, vocab, (plan.bench_tokens, 1), generator=gen, device=student.device
            )
            student.requires_grad_()
            for impl in impls:
                reference = "naive" if impl in KD_IMPLS else CE_KD_IMPLS[0]
                case = {"vocab": vocab, "dtype": dtype_name, "tokens": plan.bench_tokens,
                        "impl": impl, "reference": reference}  # fmt: skip
                if clock.remaining() < reserve_s:
                    case.update(status="skipped", reason="time budget (kept for salt_step)")
                else:
                    try:
                        case.update(status="ok", **measure_impl(
                            loss_fn(impl, 1), student, teacher, labels, plan))  # fmt: skip
                    except Exception as err:  # noqa: BLE001 - e.g. out of memory: next case
                        case.update(status="error", error=f"{type(err).__name__}: {err}"[:300])
                    student.grad = None
                    clock.log(f"kd_loss_benchmark: {_case_line(case)}")
                cases.append(case)
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            del student, teacher, labels
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return {
        "status": "ok",
        "modelopt": modelopt_missing or _modelopt_version(),
        "modelopt_measured": modelopt_missing is None,
        "timer": "CUDA events" if torch.cuda.is_available() else "time.perf_counter",
        "memory": "torch.cuda.max_memory_allocated"
        if torch.cuda.is_available()
        else "the process's peak RSS (VmHWM)",
        "cases": cases,
    }


def _modelopt_version() -> str:
    import modelopt

    return f"nvidia-modelopt {modelopt.__version__}"


def _case_line(case: dict) -> str:
    head = f"[{case['tokens']}, {case['vocab']}] {case['dtype']} {case['impl']}"
    if case["status"] != "ok":
        return f"{head}: {case['status']} ({case.get('reason') or case.get('error')})"
    return (
        f"{head}: {case['median_ms']:.2f} ms (median of {case['repeats']}), "
        f"peak extra {case['peak_extra_mib']:.0f} MiB"
    )


# ----------------------------------------------------------------------------- SALT steps


def write_synthetic_corpus(
    directory: Path, vocab: int, tokens: int, doc_tokens: int, seed: int = 0
) -> tuple[Path, str]:
    """A word-level tokenizer of ``vocab`` ids (the last is ``<|endoftext|>``) and a Megatron
    dataset of random documents (``doc_tokens / 2`` to ``2 * doc_tokens`` ids long) over it.
    Returns (tokenizer.json path, data prefix)."""
    import numpy as np
    import torch
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder
    from tokenizers import Tokenizer, models, pre_tokenizers

    directory.mkdir(parents=True, exist_ok=True)
    words = {f"t{i}": i for i in range(vocab - 1)}
    words["<|endoftext|>"] = vocab - 1
    tokenizer = Tokenizer(models.WordLevel(words, unk_token="t0"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer_path = directory / "tokenizer.json"
    tokenizer.save(str(tokenizer_path))

    prefix = directory / "random_text_document"
    rng = np.random.default_rng(seed)
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=DType.optimal_dtype(vocab))
    written = 0
    while written < tokens:
        doc = rng.integers(0, vocab - 1, size=int(rng.integers(doc_tokens // 2, 2 * doc_tokens)))
        doc[-1] = vocab - 1
        builder.add_document(torch.from_numpy(doc), [len(doc)])
        written += len(doc)
    builder.finalize(f"{prefix}.idx")
    return tokenizer_path, str(prefix)


class StepRuns:
    """Data, the teacher checkpoint and the runs of the ``pretrain_salt.py`` sections."""

    def __init__(self, plan: Plan, work: Path, clock: Clock, log_path: Path) -> None:
        from benchmarks.kd_step import model_config

        self.plan, self.work, self.clock, self.log_path = plan, work, clock, log_path
        clock.log(f"salt_step: writing {plan.corpus_tokens:,} random tokens (V={plan.vocab})")
        tokenizer, prefix = write_synthetic_corpus(
            work / "data", plan.vocab, plan.corpus_tokens, doc_tokens=plan.seq_length
        )
        self.common = [
            "--seq-length", str(plan.seq_length),
            "--micro-batch-size", str(plan.micro_batch),
            "--global-batch-size", str(plan.global_batch),
            "--train-iters", str(plan.train_iters),
            "--lr", "3e-4", "--min-lr", "3e-5", "--lr-decay-style", "cosine",
            "--hidden-dropout", "0", "--attention-dropout", "0",
            "--bf16",
            "--data-path", prefix,
            # No test split: Megatron-Core 0.16 loops forever building a split that gets no
            # documents (here the default 969,30,1 can round the test split to none).
            "--split", "98,2,0",
            "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", str(tokenizer),
            "--eval-iters", "0",
            "--log-interval", str(plan.log_interval),
            "--distributed-backend", plan.backend,
        ]  # fmt: skip
        self.student_cfg = model_config(list(plan.student), plan.vocab, plan.seq_length)
        self.teacher_cfg = model_config(list(plan.teacher), plan.vocab, plan.seq_length)
        self.teacher_dir: Path | None = None
        self.last_run_s = 0.0

    def run(self, name: str, argv: list[str]) -> float:
        """One ``pretrain_salt.py`` process, one rank; raise on failure. Returns seconds."""
        from megatron_salt.testing import free_port

        timeout = self.clock.remaining()
        if timeout < 10:
            raise Skipped("time budget spent")
        cmd = [sys.executable, str(REPO / "pretrain_salt.py"), *argv]
        env = dict(os.environ, RANK="0", LOCAL_RANK="0", WORLD_SIZE="1",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()),
                   PYTHONWARNINGS="ignore")  # fmt: skip
        if self.plan.backend == "gloo":
            env.setdefault("OMP_NUM_THREADS", "1")
        began = time.monotonic()
        try:
            done = subprocess.run(
                cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO
            )
            output, failure = done.stdout + done.stderr, done.returncode != 0
        except subprocess.TimeoutExpired as err:
            output = _text(err.stdout) + _text(err.stderr)
            failure = f"timed out after {timeout:.0f}s (time budget)"
        seconds = time.monotonic() - began
        tail = "\n".join(output.splitlines()[-150:])
        with self.log_path.open("a") as log:
            log.write(f"### {name} ({seconds:.1f}s)\n$ {' '.join(cmd)}\n{tail}\n\n")
        if failure:
            reason = failure if isinstance(failure, str) else f"exit {done.returncode}"
            last = next((ln for ln in reversed(output.splitlines()) if ln.strip()), "no output")
            raise RuntimeError(f"{name}: pretrain_salt.py {reason}: {last[-300:]}")
        self.clock.log(f"salt_step: {name} finished in {seconds:.1f}s")
        self.last_run_s = seconds
        return seconds

    def ensure_teacher(self) -> Path:
        if self.teacher_dir is None:
            teacher = self.work / "teacher"
            argv = [*self.plan.teacher, *self.common, "--train-iters", "1", "--save", str(teacher)]
            self.run("teacher (1 step, random init)", argv)
            self.teacher_dir = teacher
        return self.teacher_dir

    def measure(self, mode: str, index: int, extra: tuple[str, ...] = ()) -> dict[str, Any]:
        """One baseline or SALT run; per-interval step times from its metrics.jsonl."""
        out = self.work / f"{mode}-{index}"
        argv = [*self.plan.student, *self.common, *extra, "--save", str(out)]
        if mode.startswith("salt"):
            argv += ["--kd-teacher-load", str(self.ensure_teacher()),
                     "--kd-iters", str(self.plan.train_iters), "--kd-alpha", "0.5"]  # fmt: skip
        if self.last_run_s and self.clock.remaining() < 1.2 * self.last_run_s:
            raise Skipped(f"time budget: {self.clock.remaining():.0f}s left, a run takes "
                          f"~{self.last_run_s:.0f}s")  # fmt: skip
        seconds = self.run(f"{mode} run {index}", argv)
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        train = [r for r in records if r["kind"] == "train"][1:]  # first interval: warm-up
        shutil.rmtree(out, ignore_errors=True)  # checkpoints are GBs at GPU sizes
        if not train:
            raise RuntimeError(f"{mode} run {index}: no train records after the warm-up interval")
        return {
            "mode": mode,
            "index": index,
            "wall_s": seconds,
            "step_ms": [r["elapsed_time_per_iteration_ms"] for r in train],
            "teacher_share": [r["teacher_time_share"] for r in train if "teacher_time_share" in r],
        }


def summarize_runs(runs: list[dict], steps: StepRuns, peak: float | None) -> dict[str, Any]:
    """Median step time per mode and what follows from it (tokens/s, TFLOP/s, MFU, ideal)."""
    from megatron_salt.flops import forward_flops_per_token, salt_ideal_step_ratio

    plan = steps.plan
    tokens = plan.global_batch * plan.seq_length
    f_student = forward_flops_per_token(steps.student_cfg, plan.seq_length)
    f_teacher = forward_flops_per_token(steps.teacher_cfg, plan.seq_length)
    modes = {}
    for mode in dict.fromkeys(r["mode"] for r in runs):
        step_ms = statistics.median(ms for r in runs if r["mode"] == mode for ms in r["step_ms"])
        shares = [s for r in runs if r["mode"] == mode for s in r["teacher_share"]]
        flops = tokens * (3 * f_student + (f_teacher if mode.startswith("salt") else 0.0))
        tflops = flops / (step_ms / 1000) / 1e12
        modes[mode] = {
            "step_ms": step_ms,
            "tokens_per_s": tokens / (step_ms / 1000),
            "model_tflops_per_step": flops / 1e12,
            "achieved_tflops": tflops,
            "mfu": tflops / peak if peak else None,
            "ideal_step_ms_at_peak": flops / (peak * 1e12) * 1000 if peak else None,
            "teacher_share": statistics.median(shares) if shares else None,
            "intervals": sum(len(r["step_ms"]) for r in runs if r["mode"] == mode),
        }
    ideal = salt_ideal_step_ratio(steps.student_cfg, steps.teacher_cfg, plan.seq_length)
    pairs = {}
    for suffix in ("", "-fp8"):
        base, salt = modes.get("baseline" + suffix), modes.get("salt" + suffix)
        if base and salt:
            ratio = salt["step_ms"] / base["step_ms"]
            pairs["bf16" if not suffix else "fp8"] = {
                "salt_over_baseline": ratio,
                "flop_ideal": ideal,
                "measured_over_ideal": ratio / ideal,
            }
    return {"modes": modes, "pairs": pairs}


def section_salt_step(plan: Plan, clock: Clock, steps: StepRuns, peak, peak_source):
    """Baseline and SALT ``pretrain_salt.py`` runs, A B A B while the budget allows."""
    config = {
        "student": " ".join(plan.student),
        "teacher": " ".join(plan.teacher),
        "student_params": steps.student_cfg.num_parameters(),
        "teacher_params": steps.teacher_cfg.num_parameters(),
        "vocab": plan.vocab,
        "seq_length": plan.seq_length,
        "micro_batch": plan.micro_batch,
        "global_batch": plan.global_batch,
        "tokens_per_step": plan.global_batch * plan.seq_length,
        "train_iters": plan.train_iters,
        "log_interval": plan.log_interval,
        "backend": plan.backend,
        "precision": "bf16",
        "peak_tflops": peak,
        "peak_source": peak_source,
        "common_flags": " ".join(steps.common),
    }
    result: dict[str, Any] = {"status": "ok", "config": config, "runs": []}
    steps.ensure_teacher()
    try:
        for pair in range(plan.ab_pairs):
            for mode in ("baseline", "salt"):
                result["runs"].append(steps.measure(mode, pair))
    except Skipped as why:
        result["note"] = f"stopped early: {why}"
        clock.log(f"salt_step: {why}")
    except RuntimeError as err:  # a failed run: keep the runs that finished
        if not result["runs"]:
            raise
        result.update(status="partial", note=f"stopped by an error: {err}")
    if not result["runs"]:
        raise Skipped(result.get("note", "no run finished"))
    result.update(summarize_runs(result["runs"], steps, peak))
    return result


def section_fp8(plan: Plan, clock: Clock, get_steps, peak) -> dict[str, Any]:
    """FP8 needs Transformer Engine: one baseline and one SALT run with it, else a skip."""
    from megatron_salt.compat import have_transformer_engine

    if not have_transformer_engine():
        raise Skipped(
            "Transformer Engine does not import here, so FP8 is not measured (on the device "
            "tool's machine it cannot be installed: its wheels exceed what a call carries)"
        )
    steps = get_steps()
    fp8 = ("--fp8-format", "hybrid")
    runs = [steps.measure("baseline-fp8", 0, fp8), steps.measure("salt-fp8", 0, fp8)]
    return {"status": "ok", "runs": runs, **summarize_runs(runs, steps, peak)}


def _text(value) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--out", required=True, help="folder for gpu_check.{md,json} and the run log"
    )
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on CPU (gloo)")
    parser.add_argument("--budget-s", type=float, default=450.0, help="overall time budget")
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="bf16 dense peak for MFU (default: from the device name)",
    )
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument(
        "--work-dir",
        default=None,
        help="scratch for data and checkpoints (default: a temporary folder)",
    )
    args = parser.parse_args(argv)  # fmt: skip
    if args.budget_s <= 0:
        parser.error(f"--budget-s must be > 0, got {args.budget_s:g}")
    if args.peak_tflops is not None and args.peak_tflops <= 0:
        parser.error(f"--peak-tflops must be > 0, got {args.peak_tflops:g}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        parser.error(f"--out {out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".gpu_check_write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        parser.error(f"--out {out}: cannot write there ({err.strerror})")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch initialises CUDA
    clock = Clock(args.budget_s)
    from megatron_salt.compat import filter_upstream_noise

    filter_upstream_noise()
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check.py: error: no CUDA device here; use --dry-run for the CPU path",
              file=sys.stderr)  # fmt: skip
        return 2
    plan = DRY_RUN_PLAN if args.dry_run else GPU_PLAN
    out = Path(args.out)
    run_log = out / "gpu_check_runs.log"
    run_log.write_text("")
    machine = machine_info()
    peak, peak_source = peak_tflops(
        machine["device"] if machine["device"] != "cpu" else None, args.peak_tflops
    )
    report: dict[str, Any] = {
        "command": "python benchmarks/gpu_check.py " + " ".join(argv or sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
        "dry_run": args.dry_run,
        "budget_s": args.budget_s,
        "machine": machine,
        "plan": asdict(plan),
        "sections": {},
    }
    clock.log(f"{machine['device']}, torch {machine['torch']}, megatron-core "
              f"{machine['megatron_core']}; sections: {' '.join(args.sections)}")  # fmt: skip
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    steps: StepRuns | None = None

    def get_steps() -> StepRuns:
        nonlocal steps
        if steps is None:
            steps = StepRuns(plan, work, clock, run_log)
        return steps

    reserve = plan.step_reserve_s if "salt_step" in args.sections else 0.0
    bodies = {
        "kd_loss_accuracy": lambda: section_accuracy(plan, clock),
        "kd_loss_benchmark": lambda: section_benchmark(plan, clock, reserve),
        "salt_step": lambda: section_salt_step(plan, clock, get_steps(), peak, peak_source),
        "fp8": lambda: section_fp8(plan, clock, get_steps, peak),
    }
    try:
        for name in SECTIONS:
            if name not in args.sections:
                continue
            clock.log(f"{name}: start")
            began = time.monotonic()
            try:
                if name in ("kd_loss_accuracy", "kd_loss_benchmark"):
                    init_single_rank(plan.backend)
                result = bodies[name]()
            except Skipped as why:
                result = {"status": "skipped", "reason": str(why)}
            except Exception as err:  # noqa: BLE001 - recorded; the next section still runs
                result = {
                    "status": "error",
                    "error": f"{type(err).__name__}: {err}"[:2000],
                    "traceback": traceback.format_exc()[-4000:],
                }
            result["seconds"] = time.monotonic() - began
            report["sections"][name] = result
            report["elapsed_s"] = clock.elapsed()
            write_report(out, report)
            detail = result.get("reason") or result.get("error") or ""
            clock.log(f"{name}: {result['status']}{' - ' + detail if detail else ''}")
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    clock.log(f"wrote {out / 'gpu_check.md'} and {out / 'gpu_check.json'}")
    # The report, then its summary table last: a device call returns only the output's tail.
    print(render_markdown(report), "", "## Summary", "", *render_summary(report), sep="\n")
    bad = [n for n, s in report["sections"].items() if s["status"] not in ("ok", "skipped")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
