"""Peak memory of tools/convert_checkpoint.py import-hf and export-hf against the model's size.

    python benchmarks/convert_memory.py [--layers 12 --hidden 1024 --ffn 2816 --vocab 32000]

Makes a random Llama of that shape with transformers (fp32, safetensors in 200 MB
shards), then runs ``import_hf`` and ``export_hf`` each in a fresh subprocess. A
thread samples ``/proc/self/status`` every 5 ms: the rise of anonymous resident memory
(``RssAnon``) above its value once every library is imported is what the conversion
itself allocates; ``RssFile`` (the memory-mapped safetensors pages, which the kernel
can drop) is reported separately. Prints one Markdown row per direction.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def _status() -> dict[str, float]:
    values = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("RssAnon", "RssFile")):
                key, value = line.split(":")
                values[key] = int(value.split()[0]) / 1024
    return values


def _measure(direction: str, work: Path) -> None:
    from megatron_salt.compat import apply_cpu_patches

    apply_cpu_patches()
    import megatron.core.dist_checkpointing  # noqa: F401 - imported before the baseline
    import megatron.core.models.gpt  # noqa: F401
    import safetensors.torch  # noqa: F401
    import transformers  # noqa: F401

    from megatron_salt.convert.hf import export_hf, import_hf

    base = _status()["RssAnon"]
    peak = {"RssAnon": 0.0, "RssFile": 0.0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for key, value in _status().items():
                peak[key] = max(peak[key], value)
            time.sleep(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.perf_counter()
    if direction == "import":
        import_hf(work / "hf", work / "ckpt")
    else:
        export_hf(work / "ckpt", work / "out")
    seconds = time.perf_counter() - start
    done.set()
    thread.join()
    print(f"{peak['RssAnon'] - base:.0f} {peak['RssFile']:.0f} {seconds:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--ffn", type=int, default=2816)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--measure", choices=["import", "export"], help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        _measure(args.measure, args.work)
        return

    import torch
    import transformers

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        config = transformers.LlamaConfig(
            vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.ffn,
            num_hidden_layers=args.layers, num_attention_heads=args.heads,
            tie_word_embeddings=False,
        )  # fmt: skip
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        params = sum(p.numel() for p in model.parameters())
        model.save_pretrained(str(work / "hf"), max_shard_size="200MB")
        del model
        model_mib = params * 4 / 2**20
        print(f"model: {params:,} parameters, {model_mib:.0f} MiB in fp32\n")
        print("| direction | extra anonymous MiB | x model | mapped file pages MiB | s |")
        print("|---|---:|---:|---:|---:|")
        for direction in ("import", "export"):
            out = subprocess.run(
                [sys.executable, __file__, "--measure", direction, "--work", str(work)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            anon, mapped, seconds = map(float, out.stdout.split()[-3:])
            print(
                f"| {direction} | {anon:.0f} | {anon / model_mib:.2f} | {mapped:.0f} "
                f"| {seconds:.1f} |"
            )


if __name__ == "__main__":
    main()
