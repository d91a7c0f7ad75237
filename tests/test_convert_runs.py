"""Converted checkpoints in real runs: an imported HF teacher drives SALT and scores data,
a student trained by pretrain_salt.py leaves as a HuggingFace model. Real CLIs throughout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import stdlib_texts
from salt_runs import REPO, pretrain_on, records, salt_args

transformers = pytest.importorskip("transformers")

from test_convert_hf import hf_logits, make_hf_model  # noqa: E402

from megatron_salt.testing import free_port, run_on_ranks  # noqa: E402

TEACHER_ROWS = 336  # the tokenizer has 320 ids: 16 padding rows, unlike the student's 384


def _run(argv: list[str], world_size: int = 1) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if world_size == 1:
        env.update(WORLD_SIZE="1", RANK="0", MASTER_PORT=str(free_port()))
        cmd = [sys.executable, *argv]
    else:
        launcher = ["-m", "torch.distributed.run", f"--nproc_per_node={world_size}"]
        cmd = [sys.executable, *launcher, f"--master_port={free_port()}", *argv]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)


@pytest.fixture(scope="module")
def hf_teacher(tiny_data, tmp_path_factory):
    """A Llama (GQA) on the tiny data's tokenizer, as HF files and imported by the CLI."""
    from megatron_salt.convert.tokenizer_files import write_hf_tokenizer

    root = tmp_path_factory.mktemp("hf_teacher")
    hf = root / "hf"
    make_hf_model(
        hf,
        "LlamaConfig",
        dict(hidden_size=48, intermediate_size=96, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=TEACHER_ROWS, tie_word_embeddings=False),
    )  # fmt: skip
    write_hf_tokenizer("SentencePieceTokenizer", tiny_data.tokenizer_model, hf)
    result = _run([str(REPO / "tools/convert_checkpoint.py"), "import-hf", "--hf-dir", str(hf),
                   "--save", str(root / "ckpt"), "--seq-length", "64"])  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"vocab {tiny_data.vocab_size} padded to {TEACHER_ROWS}" in result.stdout
    return hf, root / "ckpt"


def _median_top_k_scores(hf_dir, documents, window: int, top_k: int = 10) -> list[float]:
    """SALT_DS scores computed with transformers: median loss over top-k positions."""
    model = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32)
    scores = []
    for ids in documents:
        kept = []
        for start in range(0, len(ids) - 1, window):
            tokens = torch.tensor(ids[start : start + window + 1])
            with torch.no_grad():
                logits = model(tokens[None, :-1]).logits[0, :, :320].double()
            labels = tokens[1:]
            loss = torch.logsumexp(logits, -1) - logits.gather(-1, labels[:, None])[:, 0]
            kth = logits.topk(top_k, -1).values[:, -1]
            keep = logits.gather(-1, labels[:, None])[:, 0] >= kth
            kept.append(loss[keep])
        scores.append(float(np.median(torch.cat(kept).numpy())))
    return scores


def test_imported_teacher_drives_salt_at_tp2_and_scores_documents(
    tiny_data, checkpoints, hf_teacher, tmp_path
):
    hf_dir, ckpt = hf_teacher
    # SALT: the student at TP=2, the imported teacher at TP=1 (replicated in the TP group).
    run = tmp_path / "salt"
    argv = salt_args(tiny_data, checkpoints, run, "--train-iters", "2", "--kd-iters", "2")
    argv[argv.index("--kd-teacher-load") + 1] = str(ckpt)
    argv += ["--tensor-model-parallel-size", "2", "--kd-teacher-tensor-model-parallel-size", "1"]
    result = _run([str(REPO / "pretrain_salt.py"), *argv], world_size=2)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    train = records(run)
    assert [r["iteration"] for r in train] == [1, 2]
    for rec in train:
        assert np.isfinite(rec["kd_loss"]) and np.isfinite(rec["teacher_lm_loss"])
        assert rec["kd_weight"] == 0.6

    # SALT_DS scores with the imported SLM, checked against transformers' forward.
    data = tmp_path / "data"
    data.mkdir()
    for suffix in (".bin", ".idx"):
        shutil.copyfile(tiny_data.prefix + suffix, str(data / "docs") + suffix)
    prefix = str(data / "docs")
    result = _run([str(REPO / "tools/score_data.py"), "--load", str(ckpt), "--data-path", prefix,
                   "--score-seq-length", "64", "--chunk-documents", "64",
                   "--score-unit", "document"])  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    scores = np.load(prefix + ".salt_scores.npy")
    assert scores.shape == (tiny_data.num_documents,) and np.isfinite(scores).sum() > 0
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    dataset = IndexedDataset(prefix, mmap=True)
    docs = [dataset[i].astype(np.int64).tolist() for i in range(3)]
    want = _median_top_k_scores(hf_dir, docs, window=64)
    assert scores[:3] == pytest.approx(want, abs=1e-4)


def _import(hf: str, save: str) -> None:
    from megatron_salt.convert.hf import import_hf

    import_hf(hf, save)


def test_teacher_with_another_tokenizer_is_refused_naming_both_sizes(
    tiny_data, checkpoints, tmp_path
):
    from megatron_salt.testing import RankFailed

    hf = tmp_path / "hf"
    make_hf_model(hf, "Qwen2Config", dict(hidden_size=32, intermediate_size=64,
                                         num_attention_heads=4, num_key_value_heads=2))  # fmt: skip
    run_on_ranks(_import, 1, str(hf), str(tmp_path / "ckpt"))  # no tokenizer: 136 ids
    argv = salt_args(tiny_data, checkpoints, tmp_path / "run", "--train-iters", "1",
                     "--kd-iters", "1")  # fmt: skip
    argv[argv.index("--kd-teacher-load") + 1] = str(tmp_path / "ckpt")
    with pytest.raises(RankFailed, match=rf"teacher vocab size 136 != student vocab size "
                                         rf"{tiny_data.vocab_size}"):  # fmt: skip
        pretrain_on(1, argv)


def _megatron_logits(ckpt, tokens):
    from megatron_salt.checkpoint_dir import load_model_config, resolve_checkpoint
    from megatron_salt.config import ParallelConfig, PrecisionConfig
    from megatron_salt.convert.hf import single_process_megatron
    from megatron_salt.teacher import load_frozen_gpt

    with single_process_megatron():
        ckpt_dir = resolve_checkpoint(ckpt)
        cfg = load_model_config(ckpt_dir)
        model = load_frozen_gpt(ckpt_dir, cfg, ParallelConfig(1, 1), PrecisionConfig())
        positions = torch.arange(tokens.shape[1]).unsqueeze(0).expand(tokens.shape[0], -1)
        with torch.no_grad():
            return model(tokens, positions, None, labels=tokens).transpose(0, 1).contiguous()


def test_trained_student_exports_to_transformers(tiny_data, checkpoints, tmp_path):
    trained = checkpoints[0]  # 12 iterations of pretrain_salt.py (LayerNorm, GeLU, biases, tied)
    out = tmp_path / "hf"
    (iteration,) = [int(p.name[5:]) for p in trained.glob("iter_*")]
    result = _run([str(REPO / "tools/convert_checkpoint.py"), "export-hf", "--load", str(trained),
                   "--iteration", str(iteration), "--hf-dir", str(out)])  # fmt: skip
    assert result.returncode == 0, result.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["GPTNeoXForCausalLM"]
    assert config["use_parallel_residual"] is False and config["tie_word_embeddings"] is True

    from megatron.core.datasets.indexed_dataset import IndexedDataset

    dataset = IndexedDataset(tiny_data.prefix, mmap=True)
    tokens = torch.from_numpy(np.stack([dataset[i][:64].astype(np.int64) for i in range(2)]))
    ours = run_on_ranks(_megatron_logits, 1, str(trained), tokens)[0]
    theirs = hf_logits(out, tokens)
    assert (ours - theirs).abs().max().item() <= 1e-4

    # The sentencepiece tokenizer, exported: the same ids as ours on real text.
    from megatron_salt.tokenizer import HuggingFaceTokenizer, build_tokenizer

    sp = build_tokenizer("SentencePieceTokenizer", tiny_data.tokenizer_model)
    auto = transformers.AutoTokenizer.from_pretrained(str(out))
    ours_hf = HuggingFaceTokenizer(str(out))
    texts = stdlib_texts(max_bytes=1_500_000)[-30:]
    texts.append("Ünïcödé, tabs\tand  double  spaces\n\n– 数字 12345 ✓")
    for text in texts:
        ids = sp.encode(text)
        assert auto(text, add_special_tokens=False)["input_ids"] == ids
        assert ours_hf.encode(text) == ids
    assert auto.eos_token_id == sp.eod == ours_hf.eod


def test_teacher_with_another_tokenizer_of_the_same_size_is_refused(
    tiny_data, checkpoints, hf_teacher, tmp_path
):
    import sentencepiece as spm

    from megatron_salt.checkpoint_dir import write_manifest
    from megatron_salt.convert.tokenizer_files import write_hf_tokenizer
    from megatron_salt.testing import RankFailed

    # Another BPE model with exactly the student's 320 ids, trained on other text.
    text = tmp_path / "other.txt"
    text.write_text("\n".join(t.upper() for t in stdlib_texts(max_bytes=300_000)))
    spm.SentencePieceTrainer.train(
        input=str(text), model_prefix=str(tmp_path / "other"), vocab_size=tiny_data.vocab_size,
        model_type="bpe", unk_id=0, eos_id=1, bos_id=-1, pad_id=-1, minloglevel=2, num_threads=1,
    )  # fmt: skip
    _, ckpt = hf_teacher
    other = tmp_path / "ckpt"
    shutil.copytree(ckpt, other)
    tokenizer_dir = other / "iter_0000000" / "tokenizer"
    shutil.rmtree(tokenizer_dir)
    write_hf_tokenizer("SentencePieceTokenizer", str(tmp_path / "other.model"), tokenizer_dir)
    write_manifest(other / "iter_0000000", 0)  # as its author would ship it: consistent
    argv = salt_args(tiny_data, checkpoints, tmp_path / "run", "--train-iters", "1",
                     "--kd-iters", "1")  # fmt: skip
    argv[argv.index("--kd-teacher-load") + 1] = str(other)
    with pytest.raises(RankFailed, match="encode the same text to different ids"):
        pretrain_on(1, argv)


LLAMA_FLAGS = [
    "--num-layers", "2", "--hidden-size", "48", "--ffn-hidden-size", "96",
    "--num-attention-heads", "4", "--group-query-attention", "--num-query-groups", "2",
    "--normalization", "RMSNorm", "--norm-epsilon", "1e-6", "--swiglu", "--disable-bias-linear",
    "--untie-embeddings-and-output-weights",
]  # fmt: skip


def test_student_starts_from_an_imported_model_at_tp2(tiny_data, hf_teacher, tmp_path):
    """--load --finetune of an import whose 336 rows are not Megatron's padding at TP=2 (512):
    the student keeps the checkpoint's rows; flags describing another model are refused."""
    from salt_runs import common_args

    from megatron_salt.testing import RankFailed

    _, ckpt = hf_teacher
    run = tmp_path / "run"
    argv = [*LLAMA_FLAGS, *common_args(tiny_data, run, "--train-iters", "1"),
            "--load", str(ckpt), "--finetune", "--tensor-model-parallel-size", "2"]  # fmt: skip
    summary = pretrain_on(2, argv)
    assert summary["iteration"] == 1
    saved = json.loads(next(run.glob("iter_*/model_config.json")).read_text())
    assert saved["trained_padded_vocab_size"] == TEACHER_ROWS
    wrong = [a for a in argv if a != "--untie-embeddings-and-output-weights"]
    with pytest.raises(RankFailed, match="untie_embeddings_and_output_weights=False vs True"):
        pretrain_on(1, [*wrong[: wrong.index("--tensor-model-parallel-size")]])
