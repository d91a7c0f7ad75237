#!/usr/bin/env python
"""Soak test: a 2-process run killed with -9 at random steps, resumed each time.

Runs ``torchrun --nproc_per_node 2 pretrain_salt.py`` (DP=2, distributed optimizer) on a
tiny model for ``--train-iters`` steps with a save every ``--save-interval`` steps, twice:

1. uninterrupted (the reference);
2. the same command relaunched with ``--load`` = ``--save`` after each ``kill -9`` of the
   whole process group at a random step (``--kills`` times; some kills land mid-save),
   then run to the end.

Passes when every training record of (2) (loss, grad norm, learning rate) equals the
reference bit for bit and every iteration appears exactly once in ``metrics.jsonl``.
Not part of the test suite (minutes on 2 cores)::

    python benchmarks/soak_resume.py --work-dir /tmp/soak --train-iters 300 --kills 5
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMPARED = ("lm_loss", "grad_norm", "learning_rate")


def build_data(work: Path) -> tuple[str, str]:
    """A sentencepiece model and a Megatron dataset from Python's standard library."""
    import sentencepiece as spm
    import torch

    from megatron_salt.compat import filter_upstream_noise

    filter_upstream_noise()
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    prefix = work / "data" / "stdlib_text_document"
    model = work / "data" / "spm.model"
    if Path(f"{prefix}.idx").exists() and model.exists():
        return str(prefix), str(model)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    texts, total = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        texts.append(path.read_text(encoding="utf-8", errors="replace"))
        total += len(texts[-1])
        if total > 1_500_000:
            break
    (prefix.parent / "train.txt").write_text("\n".join(texts))
    spm.SentencePieceTrainer.train(
        input=str(prefix.parent / "train.txt"), model_prefix=str(model.with_suffix("")),
        vocab_size=320, model_type="bpe", unk_id=0, eos_id=1, bos_id=-1, pad_id=-1,
        input_sentence_size=20_000, num_threads=1, minloglevel=2,
    )  # fmt: skip
    sp = spm.SentencePieceProcessor(model_file=str(model))
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=DType.optimal_dtype(320))
    for ids in sp.encode(texts):
        ids = [*ids, sp.eos_id()]
        builder.add_document(torch.tensor(ids), [len(ids)])
    builder.finalize(f"{prefix}.idx")
    return str(prefix), str(model)


def command(args, prefix: str, tokenizer: str, save: Path) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_port", str(_free_port()), str(REPO / "pretrain_salt.py"),
        "--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4",
        "--seq-length", "32", "--micro-batch-size", "2", "--global-batch-size", "8",
        "--train-iters", str(args.train_iters), "--lr", "2e-3", "--min-lr", "1e-4",
        "--lr-decay-style", "cosine", "--lr-warmup-iters", "10",
        "--use-distributed-optimizer", "--seed", "7",
        "--data-path", prefix, "--split", "95,5,0", "--tokenizer-type", "SentencePieceTokenizer",
        "--tokenizer-model", tokenizer, "--log-interval", "1",
        "--eval-interval", str(args.train_iters), "--eval-iters", "2",
        "--save", str(save), "--load", str(save), "--save-interval", str(args.save_interval),
    ]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env() -> dict[str, str]:
    # One intra-op thread per rank: CPU reductions are bitwise reproducible only at a
    # fixed thread count.
    return dict(os.environ, OMP_NUM_THREADS="1")


def train_records(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record["kind"] == "train":
            records.append(record)
    return records


def run_to_end(cmd: list[str], log: Path) -> None:
    with open(log, "a") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=_env())
    if proc.returncode != 0:
        sys.exit(f"soak: the run failed (exit {proc.returncode}); see {log}")


def kill_tree(pid: int) -> None:
    """kill -9 torchrun and every process under it (torchrun starts each worker in a
    session of its own, so killing torchrun's process group would orphan them)."""
    import psutil

    try:
        root = psutil.Process(pid)
        tree = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return
    for process in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signal.SIGKILL)
    psutil.wait_procs(tree, timeout=30)


def kill_at(cmd: list[str], run: Path, target: int, log: Path) -> tuple[int, int]:
    """Launch, SIGKILL the process group once iteration ``target`` is logged; return
    (the iteration it was killed at, the checkpoint it had resumed from)."""
    start = run / "latest_checkpointed_iteration.txt"
    resumed_from = int(start.read_text()) if start.exists() else 0
    with open(log, "a") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=_env(), start_new_session=True
        )
        while proc.poll() is None:
            done = [r["iteration"] for r in train_records(run)]
            if done and done[-1] >= target:
                break
            time.sleep(0.01)
        kill_tree(proc.pid)
        proc.wait()
    done = [r["iteration"] for r in train_records(run)]
    return (done[-1] if done else 0), resumed_from


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--train-iters", type=int, default=300)
    parser.add_argument("--save-interval", type=int, default=7)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0, help="of the kill steps")
    args = parser.parse_args()

    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    prefix, tokenizer = build_data(work)
    reference, soak = work / "reference", work / "soak"
    log = work / "soak.log"
    for run in (reference, soak):
        subprocess.run(["rm", "-rf", str(run)], check=True)

    t0 = time.time()
    run_to_end(command(args, prefix, tokenizer, reference), log)
    print(f"reference: {args.train_iters} steps in {time.time() - t0:.0f}s")

    rng = random.Random(args.seed)
    targets = sorted(rng.sample(range(5, args.train_iters - 5), args.kills))
    cmd = command(args, prefix, tokenizer, soak)
    for target in targets:
        killed, resumed_from = kill_at(cmd, soak, target, log)
        saved = soak / "latest_checkpointed_iteration.txt"
        print(
            f"launch resumed from iteration {resumed_from}, killed -9 at iteration {killed} "
            f"(latest complete checkpoint: {saved.read_text().strip() if saved.exists() else '-'}"
            f"; leftover partial: {[p.name for p in soak.glob('*.partial')]})"
        )
    run_to_end(cmd, log)

    ref, got = train_records(reference), train_records(soak)
    iterations = [r["iteration"] for r in got]
    problems = []
    if iterations != list(range(1, args.train_iters + 1)):
        problems.append(f"iterations in metrics.jsonl: {iterations[:5]}... ({len(iterations)})")
    for a, b in zip(ref, got, strict=False):
        for key in COMPARED:
            if a.get(key) != b.get(key):
                problems.append(f"iteration {a['iteration']} {key}: {a.get(key)} vs {b.get(key)}")
    print(
        f"final lm loss: reference {ref[-1]['lm_loss']!r}, killed {len(targets)}x and resumed "
        f"{got[-1]['lm_loss']!r}"
    )
    if problems:
        print("FAIL:\n  " + "\n  ".join(problems[:20]))
        return 1
    print(f"PASS: all {len(ref)} steps bitwise equal ({', '.join(COMPARED)}); total "
          f"{time.time() - t0:.0f}s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
