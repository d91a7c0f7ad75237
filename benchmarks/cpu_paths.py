#!/usr/bin/env python
"""Where the demo's time goes on a CPU: the student's step under each precision and ISA.

    python benchmarks/cpu_paths.py [--threads 1 2] [--steps 5] [--json out.json]

One Megatron-Core GPTModel with the tiny CPU example's student shape (4 layers, hidden 192,
seq 256, micro-batch 8, vocab 4096), forward + backward of one micro-batch, in a fresh
process per case, because the kernels are chosen when torch loads:

* ``bf16`` / ``fp32`` on this CPU's own vector extensions;
* ``fp32, AVX2 kernels``: ATen, oneDNN and MKL limited to AVX2
  (``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2``),
  the code path of an AVX2-only CPU, on this CPU's cores;
* a 2048x768x768 GEMM in each dtype and ISA (``bf16, AVX2 kernels`` is what bf16 costs
  without bf16 in hardware: examples/tiny_cpu/config.sh picks fp32 there).

Reports process CPU time per micro-batch (insensitive to other jobs on a shared host) and
wall-clock; with ``--threads 1 2`` the wall ratio shows what the second thread buys (only
meaningful on an otherwise idle machine: the load average is printed with the table).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
AVX2_ONLY = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
             "MKL_ENABLE_INSTRUCTIONS": "AVX2"}  # fmt: skip
CASES = {  # name -> (bf16, extra environment)
    "bf16": (True, {}),
    "fp32": (False, {}),
    "fp32, AVX2 kernels": (False, AVX2_ONLY),
}


def measure_step(bf16: bool, steps: int) -> dict[str, float]:
    """In this process: CPU and wall seconds per forward+backward of one micro-batch."""
    import time

    import torch
    from megatron.core import parallel_state, tensor_parallel

    from megatron_salt.compat import filter_upstream_noise
    from megatron_salt.config import ModelConfig, ParallelConfig, PrecisionConfig
    from megatron_salt.model import build_gpt_model, transformer_config
    from megatron_salt.parallel import initialize_distributed

    filter_upstream_noise()
    initialize_distributed(alone=True)
    parallel_state.initialize_model_parallel(1, 1)
    tensor_parallel.model_parallel_cuda_manual_seed(1234)
    model_cfg = ModelConfig(
        num_layers=4, hidden_size=192, num_attention_heads=4, ffn_hidden_size=768,
        seq_length=256, vocab_size=4096, hidden_dropout=0.0, attention_dropout=0.0,
    )  # fmt: skip
    config = transformer_config(model_cfg, ParallelConfig(), PrecisionConfig(bf16=bf16))
    model = build_gpt_model(model_cfg, config, pre_process=True, post_process=True)
    tokens = torch.randint(0, 4096, (8, 256))
    positions = torch.arange(256).expand(8, -1)

    def step() -> None:
        logits = model(tokens, positions, None, labels=tokens)  # [s, b, v]
        loss = torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]), tokens.t().reshape(-1)
        )
        loss.backward()

    step()  # warm-up: allocator, oneDNN primitive caches
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    return {
        "cpu_s": (time.process_time() - cpu) / steps,
        "wall_s": (time.perf_counter() - wall) / steps,
    }


def measure_gemm(dtype_name: str) -> float:
    """In this process: GFLOP/s of CPU time for a 2048x768 @ 768x768 GEMM."""
    import time

    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(2048, 768, dtype=dtype), torch.randn(768, 768, dtype=dtype)
    a @ b
    repeats, cpu = 3, time.process_time()
    for _ in range(repeats):
        a @ b
    return 2 * 2048 * 768 * 768 * repeats / (time.process_time() - cpu) / 1e9


def run_case(kind: str, args: list[str], env: dict[str, str], threads: int) -> dict:
    """Run one measurement in a fresh interpreter (the ISA is fixed when torch loads)."""
    child_env = {**os.environ, **env, "OMP_NUM_THREADS": str(threads)}
    result = subprocess.run(
        [sys.executable, __file__, "--child", kind, *args],
        env=child_env, capture_output=True, text=True, check=False, cwd=REPO,
    )  # fmt: skip
    if result.returncode != 0:
        raise SystemExit(f"cpu_paths: {kind} {args} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:  # one measurement, printed as JSON for the parent
        kind, *rest = args.child
        if kind == "step":
            print(json.dumps(measure_step(rest[0] == "bf16", int(rest[1]))))
        else:
            print(json.dumps({"gflops": measure_gemm(rest[0])}))
        return 0

    sys.path.insert(0, str(REPO))
    from megatron_salt.stage_times import describe_machine

    machine = describe_machine()
    results: dict = {"machine": machine, "load_average": os.getloadavg(), "steps": {}, "gemm": {}}
    print(f"# CPU paths on {machine['cpu']} ({machine['vector extensions']}), "
          f"load average {os.getloadavg()[0]:.1f}\n")  # fmt: skip
    header = "| case | " + " | ".join(
        f"{t} thread{'s' * (t > 1)}: CPU s / wall s" for t in args.threads
    )
    print(header + " | GEMM GFLOP/s (1 thread) |")
    print("|---" * (len(args.threads) + 2) + "|")
    for name, (bf16, env) in CASES.items():
        cells = []
        for threads in args.threads:
            step = run_case("step", ["bf16" if bf16 else "fp32", str(args.steps)], env, threads)
            results["steps"][f"{name}, {threads} threads"] = step
            cells.append(f"{step['cpu_s']:.3f} / {step['wall_s']:.3f}")
        gemm = run_case("gemm", ["bfloat16" if bf16 else "float32"], env, 1)["gflops"]
        results["gemm"][name] = gemm
        print(f"| {name} | " + " | ".join(cells) + f" | {gemm:.1f} |")
    gemm = run_case("gemm", ["bfloat16"], AVX2_ONLY, 1)["gflops"]
    results["gemm"]["bf16, AVX2 kernels"] = gemm
    print("| bf16, AVX2 kernels (no bf16 hardware) | " + " | ".join("—" for _ in args.threads)
          + f" | {gemm:.1f} |")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
