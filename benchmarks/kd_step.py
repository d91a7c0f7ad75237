#!/usr/bin/env python
"""Step time of a SALT (KD) step against a baseline step, next to the FLOP-ideal ratio.

    python benchmarks/kd_step.py [--data-prefix demo_out/data/demo_text_document \
        --tokenizer-model demo_out/tokenizer/spm.model] [--layouts single tp2 pp2]

The student and teacher are the tiny CPU example's (examples/tiny_cpu/config.sh).
Each layout runs baseline and SALT runs alternately (A B A B ...) through the real
``pretrain_salt.py`` and reads their step times from ``metrics.jsonl``; the first
log interval is warm-up and dropped. The FLOP-ideal ratio is
``1 + F_teacher_fwd / F_student_fwd+bwd`` (megatron_salt/flops.py): everything
above it is overhead of the KD machinery (teacher dispatch, KD loss, copies).
The teacher's weights are random (quality does not change its cost).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from megatron_salt.config import ModelConfig  # noqa: E402
from megatron_salt.flops import salt_ideal_step_ratio  # noqa: E402

# layout -> (processes, student flags, extra teacher flags)
LAYOUTS = {
    "single": (1, [], []),
    "tp2": (2, ["--tensor-model-parallel-size", "2"], []),
    # the small teacher unsharded on each rank: more FLOPs, no teacher TP communication
    "tp2-teacher-tp1": (
        2,
        ["--tensor-model-parallel-size", "2"],
        ["--kd-teacher-tensor-model-parallel-size", "1"],
    ),
    "pp2": (
        2,
        ["--pipeline-model-parallel-size", "2"],
        ["--kd-teacher-pipeline-model-parallel-size", "2"],
    ),
}


def example_args() -> dict[str, list[str]]:
    """STUDENT_ARGS / TEACHER_ARGS / TRAIN_ARGS as examples/tiny_cpu/config.sh defines them."""
    script = REPO / "examples/tiny_cpu/config.sh"
    out = {}
    for name in ("STUDENT_ARGS", "TEACHER_ARGS", "TRAIN_ARGS"):
        text = subprocess.run(
            ["bash", "-c", f'source "{script}" && printf "%s\\n" "${{{name}[@]}}"'],
            check=True, capture_output=True, text=True,
            env=dict(os.environ, DEMO_DIR=os.environ.get("DEMO_DIR", "demo_out")),
        ).stdout  # fmt: skip
        out[name] = text.split("\n")[:-1]
    return out


def run(nproc: int, argv: list[str], env: dict[str, str]) -> None:
    if nproc == 1:
        cmd = [sys.executable, str(REPO / "pretrain_salt.py"), *argv]
    else:
        port = str(29700 + os.getpid() % 100)
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               "--master_port", port, str(REPO / "pretrain_salt.py"), *argv]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"kd_step: run failed: {shlex.join(cmd)}\n{proc.stderr[-3000:]}")


def _tp(flags: list[str], default: int = 1) -> int:
    """The TP size a layout's flags set (``default`` when they leave it alone)."""
    for name in ("--tensor-model-parallel-size", "--kd-teacher-tensor-model-parallel-size"):
        if name in flags:
            return int(flags[flags.index(name) + 1])
    return default


def step_times_ms(run_dir: Path) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    return [r["elapsed_time_per_iteration_ms"] for r in train[1:]]  # first interval: warm-up


def model_config(args: list[str], vocab_size: int, seq_length: int) -> ModelConfig:
    flag = {args[i]: args[i + 1] for i in range(0, len(args) - 1) if args[i].startswith("--")}
    return ModelConfig(
        num_layers=int(flag["--num-layers"]),
        hidden_size=int(flag["--hidden-size"]),
        num_attention_heads=int(flag["--num-attention-heads"]),
        ffn_hidden_size=int(flag["--ffn-hidden-size"]) if "--ffn-hidden-size" in flag else None,
        seq_length=seq_length,
        vocab_size=vocab_size,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-prefix", default="demo_out/data/demo_text_document")
    parser.add_argument("--tokenizer-model", default="demo_out/tokenizer/spm.model")
    parser.add_argument("--layouts", nargs="+", default=["single", "tp2", "pp2"], choices=LAYOUTS)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--log-interval", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2, help="A/B pairs per layout")
    opts = parser.parse_args()
    if not Path(opts.data_prefix + ".idx").is_file():
        sys.exit(
            f"kd_step: {opts.data_prefix}.idx not found: run `make demo` or pass --data-prefix"
        )

    import sentencepiece

    vocab = sentencepiece.SentencePieceProcessor(model_file=opts.tokenizer_model).get_piece_size()
    ex = example_args()
    train = list(ex["TRAIN_ARGS"])
    seq = int(train[train.index("--seq-length") + 1])
    data = ["--data-path", opts.data_prefix, "--tokenizer-type", "SentencePieceTokenizer",
            "--tokenizer-model", opts.tokenizer_model]  # fmt: skip
    common = [*train, *data, "--eval-iters", "0", "--log-interval", str(opts.log_interval),
              "--train-iters", str(opts.iters)]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    student = model_config(ex["STUDENT_ARGS"], vocab, seq)
    ideal = salt_ideal_step_ratio(student, model_config(ex["TEACHER_ARGS"], vocab, seq), seq)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        teacher = Path(tmp) / "teacher"
        init = ["--train-iters", "1", "--lr-warmup-iters", "0"]  # random weights suffice
        run(1, [*ex["TEACHER_ARGS"], *common, *init, "--save", str(teacher)], env)
        for layout in opts.layouts:
            nproc, student_flags, teacher_flags = LAYOUTS[layout]
            kd = ["--kd-teacher-load", str(teacher), "--kd-iters", str(opts.iters), *teacher_flags]
            times = {"baseline": [], "salt": []}
            for repeat in range(opts.repeats):
                for mode, extra in (("baseline", []), ("salt", kd)):
                    out = Path(tmp) / f"{layout}-{mode}-{repeat}"
                    argv = [
                        *ex["STUDENT_ARGS"],
                        *common,
                        *student_flags,
                        *extra,
                        "--save",
                        str(out),
                    ]
                    run(nproc, argv, env)
                    times[mode] += step_times_ms(out)
            base, salt = statistics.median(times["baseline"]), statistics.median(times["salt"])
            # A teacher with less TP than the student does more of its FLOPs on every rank.
            student_tp = _tp(student_flags)
            teacher_tp = _tp(teacher_flags, default=student_tp)  # the teacher's default TP
            layout_ideal = 1.0 + (ideal - 1.0) * student_tp / teacher_tp
            rows.append((layout, base, salt, salt / base, layout_ideal, salt / base / layout_ideal))
    print(
        f"OMP_NUM_THREADS={env['OMP_NUM_THREADS']}, {opts.iters} iterations x "
        f"{opts.repeats} A/B repeats, median step time"
    )
    print("| layout | baseline (ms) | SALT (ms) | SALT/baseline | FLOP-ideal | measured/ideal |")
    print("|---|---|---|---|---|---|")
    for layout, base, salt, ratio, ideal_ratio, over in rows:
        print(
            f"| {layout} | {base:.1f} | {salt:.1f} | {ratio:.3f} | {ideal_ratio:.3f} | {over:.3f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
