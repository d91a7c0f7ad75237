"""KD loss benchmark: time and peak extra memory of forward + backward, side by side.

Compares, on the same inputs ([tokens, 1, vocab] student and teacher logits, T=1), the KD
term alone:

- ``naive``: what a user writes first: fp32 ``log_softmax`` of both + ``kl_div``; at TP>1
  the vocab shards are first gathered with Megatron-Core's
  ``gather_from_tensor_model_parallel_region`` (backward = split), every rank computing
  the full loss;
- ``ours``: ``megatron_salt.distill.vocab_parallel_kd_loss``;
- ``modelopt``: NVIDIA ModelOpt's Megatron ``LogitsKLLoss``, when ``modelopt`` imports.
  It is not a project dependency; to include it without touching the project's torch::

      pip install --no-deps --target /tmp/modelopt-site nvidia-modelopt \\
          omegaconf antlr4-python3-runtime pulp rich scipy regex
      python benchmarks/kd_loss.py --modelopt-site /tmp/modelopt-site

and the KD-phase training loss, per-token CE + KD (labels uniform at random), backward of
their sum:

- ``ours-kd+megatron-ce``: what the training loop did before the fused loss:
  ``vocab_parallel_kd_loss`` plus Megatron-Core's ``vocab_parallel_cross_entropy``, the
  latter on a clone of fp32 logits (it works in place, and the KD backward still needs
  them; bf16 logits need no clone, Megatron's CE upcasts to a copy itself);
- ``ours-fused``: ``megatron_salt.distill.vocab_parallel_salt_loss``, both from one pass.

Every case runs in a fresh subprocess (TP=2: two forked gloo ranks inside it, each holding
its vocab shard), one intra-op thread per rank. Peak extra memory is the rise of the
process's peak RSS (``VmHWM``, reset through ``/proc/self/clear_refs``) above its RSS once
the inputs exist; it includes the student gradient, which every implementation must
produce. The reported time is the median of ``--repeats`` timed iterations after one
warm-up; the peak covers all of them.

``--device cuda`` (TP=1 only) measures with ``torch.cuda.max_memory_allocated`` and
synchronised timers instead; it was not run in the session that wrote this script.

Usage::

    python benchmarks/kd_loss.py                                   # full grid, print table
    python benchmarks/kd_loss.py --write benchmarks/results/kd_loss.md
    python benchmarks/kd_loss.py --tp 1 --vocab 50304 --dtype bf16 --impl naive ours
    python benchmarks/kd_loss.py --tp 1 --vocab 50304 --impl ours-kd+megatron-ce ours-fused
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

KD_IMPLS = ("naive", "ours", "modelopt")
# CE + KD; ratios are against the first.
CE_KD_IMPLS = ("ours-kd+megatron-ce", "ours-fused")
IMPLS = KD_IMPLS + CE_KD_IMPLS
DTYPES = ("fp32", "bf16")
MIB = 1024 * 1024


# ----------------------------------------------------------------------------- worker side


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        return int(re.search(rf"{field}:\s+(\d+)", status.read()).group(1))


class CpuMemory:
    """Peak RSS above a baseline, per process (Linux)."""

    def start(self) -> None:
        try:  # hand freed heap pages back first, so reuse cannot hide allocations
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        self.baseline = _proc_status_kib("VmRSS") * 1024
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # reset VmHWM (peak RSS) to the current RSS

    def peak_extra(self) -> int:
        return _proc_status_kib("VmHWM") * 1024 - self.baseline


class CudaMemory:
    def start(self) -> None:
        import torch

        torch.cuda.synchronize()
        self.baseline = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()

    def peak_extra(self) -> int:
        import torch

        return torch.cuda.max_memory_allocated() - self.baseline


def _make_inputs(tokens, v_local, dtype, device, seed, vocab):
    """Student (requires grad) and teacher logits, filled in slices so that no
    full-size temporary raises the peak before the baseline is taken, and labels
    (the same on every rank)."""
    import torch

    labels = torch.randint(0, vocab, (tokens, 1), generator=torch.Generator().manual_seed(7))

    gen = torch.Generator().manual_seed(seed)
    student = torch.empty(tokens, 1, v_local, dtype=dtype, device=device)
    teacher = torch.empty_like(student)
    rows = 32
    for start in range(0, tokens, rows):
        stop = min(start + rows, tokens)
        shape = (stop - start, 1, v_local)
        noise = torch.randn(shape, generator=gen)
        student[start:stop] = (2.0 * noise).to(dtype)
        teacher[start:stop] = (1.2 * noise + 1.6 * torch.randn(shape, generator=gen)).to(dtype)
    return student.requires_grad_(), teacher, labels.to(device)


def loss_fn(impl: str, tp: int):
    """Return ``f(student, teacher, labels) -> (loss to backprop [s, b], full per-token loss)``."""
    import torch
    import torch.nn.functional as F

    if impl == "ours":
        from megatron_salt.distill import vocab_parallel_kd_loss

        def ours(student, teacher, labels):
            loss = vocab_parallel_kd_loss(student, teacher)
            return loss, loss

        return ours

    if impl == "ours-kd+megatron-ce":
        from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

        from megatron_salt.distill import vocab_parallel_kd_loss

        def kd_and_megatron_ce(student, teacher, labels):
            kd = vocab_parallel_kd_loss(student, teacher)
            ce_input = student.clone() if student.dtype == torch.float32 else student
            loss = vocab_parallel_cross_entropy(ce_input, labels) + kd
            return loss, loss

        return kd_and_megatron_ce

    if impl == "ours-fused":
        from megatron_salt.distill import vocab_parallel_salt_loss

        def fused(student, teacher, labels):
            ce, kd = vocab_parallel_salt_loss(student, teacher, labels)
            loss = ce + kd
            return loss, loss

        return fused

    if impl == "naive":
        from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

        def naive(student, teacher, labels):
            if tp > 1:
                student = gather_from_tensor_model_parallel_region(student)
                teacher = gather_from_tensor_model_parallel_region(teacher)
            log_p_student = F.log_softmax(student.float(), dim=-1)
            log_p_teacher = F.log_softmax(teacher.float(), dim=-1)
            kl = F.kl_div(log_p_student, log_p_teacher, reduction="none", log_target=True)
            loss = kl.sum(dim=-1)
            return loss, loss

        return naive

    from megatron.core.transformer.transformer_config import TransformerConfig
    from modelopt.torch.distill.plugins.megatron import LogitsKLLoss

    config = TransformerConfig(
        num_layers=1, hidden_size=64, num_attention_heads=4, tensor_model_parallel_size=tp
    )
    criterion = LogitsKLLoss(config, temperature=1.0)

    def modelopt(student, teacher, labels):
        # [b, s]; at TP>1 each rank holds its vocab shard's part of the KL (ModelOpt's
        # loss function all-reduces it later, outside autograd), so report the reduced sum.
        partial = criterion(student, teacher)[0]
        full = partial.detach().clone()
        if tp > 1:
            torch.distributed.all_reduce(full)
        return partial, full

    return modelopt


def _measure(impl, vocab, dtype_name, tp, tokens, repeats, device):
    import torch
    import torch.distributed as dist

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    rank = 0
    if tp > 1 or impl in CE_KD_IMPLS:  # Megatron's CE reads the TP group from parallel_state
        from megatron.core import parallel_state

        if not dist.is_initialized():
            store = dist.HashStore()
            dist.init_process_group("gloo", store=store, rank=0, world_size=1)
        parallel_state.initialize_model_parallel(tp, 1)
        rank = parallel_state.get_tensor_model_parallel_rank()
    fn = loss_fn(impl, tp)
    student, teacher, labels = _make_inputs(
        tokens, vocab // tp, dtype, device, seed=1234 + rank, vocab=vocab
    )
    memory = CudaMemory() if device == "cuda" else CpuMemory()

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()
        if tp > 1:
            dist.barrier()

    sync()
    memory.start()
    times, loss_sum = [], None
    for _ in range(repeats + 1):
        student.grad = None
        sync()
        began = time.perf_counter()
        loss, full = fn(student, teacher, labels)
        loss.sum().backward()
        sync()
        times.append(time.perf_counter() - began)
        loss_sum = float(full.double().sum())
        del loss, full
    return {
        "time_s": statistics.median(times[1:]),
        "first_s": times[0],
        "peak_extra_bytes": memory.peak_extra(),
        "loss_sum": loss_sum,
    }


def _worker(args) -> None:
    import torch

    torch.set_num_threads(1)
    if args.impl == "modelopt":
        try:
            import modelopt
            import modelopt.torch.distill.plugins.megatron  # noqa: F401
        except Exception as err:  # noqa: BLE001 - any import failure means "not available"
            print(json.dumps({"status": f"modelopt unavailable: {type(err).__name__}: {err}"}))
            return
        version = modelopt.__version__
    if args.tp == 1:
        from megatron_salt.compat import apply_cpu_patches, filter_upstream_noise

        filter_upstream_noise()
        apply_cpu_patches()
        per_rank = [
            _measure(args.impl, args.vocab, args.dtype, 1, args.tokens, args.repeats, args.device)
        ]
    else:
        from megatron_salt.compat import filter_upstream_noise
        from megatron_salt.testing import run_on_ranks

        filter_upstream_noise()
        per_rank = run_on_ranks(
            _measure,
            args.tp,
            args.impl,
            args.vocab,
            args.dtype,
            args.tp,
            args.tokens,
            args.repeats,
            args.device,
            timeout=1800,
        )
    if args.impl != "modelopt":
        version = None
    print(
        json.dumps(
            {
                "status": "ok",
                "version": version,
                "time_s": max(r["time_s"] for r in per_rank),
                "first_s": max(r["first_s"] for r in per_rank),
                "peak_extra_mib": max(r["peak_extra_bytes"] for r in per_rank) / MIB,
                "loss_sum": per_rank[0]["loss_sum"],
            }
        )
    )


# ----------------------------------------------------------------------------- driver side


def _run_case(args, impl, vocab, dtype, tp) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        f"--impl={impl}",
        f"--vocab={vocab}",
        f"--dtype={dtype}",
        f"--tp={tp}",
        f"--tokens={args.tokens}",
        f"--repeats={args.repeats}",
        f"--device={args.device}",
    ]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    if impl == "modelopt" and args.modelopt_site:
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [args.modelopt_site, env.get("PYTHONPATH")])
        )
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"status": f"timed out after {args.timeout}s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return {"status": f"failed (exit {done.returncode}): {tail}"}


def _machine() -> str:
    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as info:
            cpu = re.search(r"model name\s*:\s*(.+)", info.read()).group(1)
    except (OSError, AttributeError):
        pass
    python = platform.python_version()
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, Python {python}"


def _table(results, impls, reference: str) -> str:
    """Rows of ``results`` whose impl is in ``impls``; ratios against ``reference``."""
    lines = [
        f"| TP | V | dtype | impl | fwd+bwd s (median) | speed vs {reference} | "
        f"peak extra MiB | memory vs {reference} | loss sum |",
        "|---:|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for (tp, vocab, dtype, impl), res in results.items():
        if impl not in impls:
            continue
        if res.get("status") != "ok":
            lines.append(f"| {tp} | {vocab} | {dtype} | {impl} | {res['status']} | | | | |")
            continue
        base = results.get((tp, vocab, dtype, reference), {})
        speed = mem = ""
        if base.get("status") == "ok":
            speed = f"{base['time_s'] / res['time_s']:.2f}x"
            mem = f"{res['peak_extra_mib'] / base['peak_extra_mib']:.2f}x"
        lines.append(
            f"| {tp} | {vocab} | {dtype} | {impl} | {res['time_s']:.3g} | {speed} | "
            f"{res['peak_extra_mib']:.0f} | {mem} | {res['loss_sum']:.6g} |"
        )
    return "\n".join(lines)


def _modelopt_line(results) -> str:
    runs = [res for (*_, impl), res in results.items() if impl == "modelopt"]
    if not runs:
        return "- ModelOpt: not requested\n"
    ok = [res for res in runs if res.get("status") == "ok"]
    if ok:
        return f"- ModelOpt: nvidia-modelopt {ok[0]['version']} `LogitsKLLoss` (Megatron plugin)\n"
    return f"- ModelOpt: not measured, {runs[0]['status']}\n"


def _target_lines(args, results) -> str:
    """The issue's target: <= 0.25x naive peak memory at >= 1x naive speed, largest V."""
    vocab = max(args.vocab)
    lines = []
    for tp in args.tp:
        for dtype in args.dtype:
            ours = results.get((tp, vocab, dtype, "ours"), {})
            naive = results.get((tp, vocab, dtype, "naive"), {})
            if ours.get("status") != "ok" or naive.get("status") != "ok":
                continue
            mem = ours["peak_extra_mib"] / naive["peak_extra_mib"]
            speed = naive["time_s"] / ours["time_s"]
            verdict = "met" if mem <= 0.25 and speed >= 1.0 else "NOT met"
            lines.append(
                f"- Target [{args.tokens}, {vocab}] TP={tp} {dtype}: memory {mem:.2f}x naive "
                f"(<= 0.25x), speed {speed:.2f}x naive (>= 1x): {verdict}"
            )
    return "\n".join(lines) + "\n" if lines else ""


def _gpu_line(args) -> str:
    if args.device == "cuda":
        return "GPU numbers: this table (device cuda)."
    return (
        "GPU bf16 numbers: not measured (no GPU in this run; CPU only). On a GPU machine: "
        "`python benchmarks/kd_loss.py --device cuda --tp 1 --dtype bf16`."
    )


def _driver(args) -> None:
    cases = [
        (tp, vocab, dtype, impl)
        for tp in args.tp
        for vocab in args.vocab
        for dtype in args.dtype
        for impl in args.impl
    ]
    if args.device == "cuda" and any(tp > 1 for tp, *_ in cases):
        sys.exit("kd_loss benchmark: --device cuda supports --tp 1 only")
    load_before = os.getloadavg()
    started = time.monotonic()
    results = {}
    for index, case in enumerate(cases, 1):
        tp, vocab, dtype, impl = case
        results[case] = res = _run_case(args, impl, vocab, dtype, tp)
        elapsed = time.monotonic() - started
        eta = elapsed / index * (len(cases) - index)
        if res.get("status") == "ok":
            summary = f"{res['time_s']:.2f} s, peak extra {res['peak_extra_mib']:.0f} MiB"
        else:
            summary = res["status"]
        print(
            f"[{index}/{len(cases)}] TP={tp} V={vocab} {dtype} {impl}: {summary} "
            f"(elapsed {elapsed:.0f} s, ETA {eta:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
    load_after = os.getloadavg()
    command = "python benchmarks/kd_loss.py " + " ".join(sys.argv[1:])
    conditions = (
        f"- Command: `{command}`\n"
        f"- Machine: {_machine()}; device {args.device}; 1 intra-op thread per rank\n"
        f"- Tokens: {args.tokens} (as [s={args.tokens}, b=1]), T=1, full vocab, "
        f"{args.repeats} timed iterations after 1 warm-up\n"
        f"- Date: {datetime.datetime.now().isoformat(timespec='minutes')}; 1-min load average "
        f"{load_before[0]:.1f} before, {load_after[0]:.1f} after (other jobs shared the CPU)\n"
    )
    report = (
        "# KD loss: time and peak extra memory, forward + backward\n\n"
        "Written by `benchmarks/kd_loss.py`. Peak extra memory is per rank.\n\n"
        f"{conditions}"
    )
    if any(impl in KD_IMPLS for impl in args.impl):
        report += (
            "\n## The KD term\n\n"
            "Speed and memory are ratios against naive torch (fp32 `log_softmax` of both + "
            "`kl_div`; at TP>1 after gathering the vocab shards) at the same TP, V and dtype.\n\n"
            f"{_modelopt_line(results)}\n{_target_lines(args, results)}\n"
            f"{_table(results, KD_IMPLS, 'naive')}\n"
        )
    if any(impl in CE_KD_IMPLS for impl in args.impl):
        report += (
            "\n## CE + KD (the KD-phase training loss)\n\n"
            "Per-token CE + KD, backward of their sum. Ratios against `ours-kd+megatron-ce` "
            "(our KD loss + Megatron-Core's `vocab_parallel_cross_entropy`, on a clone of "
            "fp32 logits); `ours-fused` is `vocab_parallel_salt_loss`. No padded vocab here, "
            "so both CEs are the same function and the loss sums agree.\n\n"
            f"{_table(results, CE_KD_IMPLS, CE_KD_IMPLS[0])}\n"
        )
    report += f"\n{_gpu_line(args)}\n"
    print(report)
    if args.write:
        out = Path(args.write)
        tmp = out.with_suffix(out.suffix + ".tmp")
        tmp.write_text(report)
        tmp.replace(out)
        print(f"wrote {out}", file=sys.stderr)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tp", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--vocab", type=int, nargs="+", default=[32000, 50304])
    parser.add_argument("--dtype", nargs="+", choices=DTYPES, default=list(DTYPES))
    parser.add_argument("--impl", nargs="+", choices=IMPLS, default=list(IMPLS))
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3, help="timed iterations per case")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per case")
    parser.add_argument(
        "--modelopt-site",
        default=os.environ.get("MODELOPT_SITE"),
        help="extra sys.path entry holding nvidia-modelopt (only for the modelopt cases)",
    )
    parser.add_argument("--write", help="also write the report (markdown) to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        args.tp, args.vocab, args.dtype, args.impl = (
            args.tp[0],
            args.vocab[0],
            args.dtype[0],
            args.impl[0],
        )
        _worker(args)
    else:
        for tp in args.tp:
            for vocab in args.vocab:
                if vocab % tp:
                    parser.error(f"--vocab {vocab} is not divisible by --tp {tp}")
        _driver(args)


if __name__ == "__main__":
    main()
