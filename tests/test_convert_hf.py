"""HuggingFace checkpoints in and out, against transformers' own forward.

Tiny random models of every supported architecture are made offline with
transformers' config classes, imported, and run through the real teacher path
(``Teacher.from_checkpoint``: dist_checkpointing reshards at load) at TP=1, TP=2 and
PP=2 over gloo; their logits must match transformers' fp32 forward within 1e-4.
Export must give the same tensors back, bit for bit, and a config transformers
reads as the same function.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from megatron_salt.testing import run_on_ranks  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SEQ, BATCH = 24, 2
TOLERANCE = 1e-4

# name -> (config class, kwargs). Odd widths, GQA, tied and untied, theta != 1e4,
# llama3 rope scaling, q/k/v biases, partial rotary, both GPT-NeoX residual orders.
CASES = {
    "llama_gqa_untied": ("LlamaConfig", dict(
        hidden_size=60, intermediate_size=94, num_attention_heads=6, num_key_value_heads=2,
        rope_theta=50000.0, rms_norm_eps=1e-5, tie_word_embeddings=False)),
    "llama3_scaled_tied": ("LlamaConfig", dict(
        hidden_size=48, intermediate_size=80, num_attention_heads=4, num_key_value_heads=4,
        rope_theta=500000.0, tie_word_embeddings=True, max_position_embeddings=16384,
        rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})),
    "mistral_gqa": ("MistralConfig", dict(
        hidden_size=48, intermediate_size=72, num_attention_heads=4, num_key_value_heads=1,
        sliding_window=None, rope_theta=1e6, tie_word_embeddings=False)),
    "qwen2_bias": ("Qwen2Config", dict(
        hidden_size=48, intermediate_size=88, num_attention_heads=4, num_key_value_heads=2,
        rope_theta=1e6, tie_word_embeddings=True)),
    "pythia": ("GPTNeoXConfig", dict(
        hidden_size=40, intermediate_size=100, num_attention_heads=4, rotary_pct=0.25,
        use_parallel_residual=True, tie_word_embeddings=False)),
    "neox_sequential": ("GPTNeoXConfig", dict(
        hidden_size=32, intermediate_size=64, num_attention_heads=2, rotary_pct=0.5,
        rotary_emb_base=20000, use_parallel_residual=False, tie_word_embeddings=False)),
}  # fmt: skip
VOCAB_ROWS = 136  # divisible by TP=2
# Mistral without a sliding window is Llama; the others export as themselves.
EXPORTED_AS = {
    "LlamaConfig": "LlamaForCausalLM",
    "MistralConfig": "LlamaForCausalLM",
    "Qwen2Config": "Qwen2ForCausalLM",
    "GPTNeoXConfig": "GPTNeoXForCausalLM",
}


def make_hf_model(directory: Path, config_class: str, kwargs: dict, seed: int = 0) -> None:
    """A random HF model with non-trivial norms and biases, saved as safetensors."""
    torch.manual_seed(seed)
    defaults = dict(vocab_size=VOCAB_ROWS, num_hidden_layers=2, max_position_embeddings=256)
    config = getattr(transformers, config_class)(**{**defaults, **kwargs})
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                param.uniform_(0.5, 1.5)
            else:
                param.normal_(0.0, 0.1)
    model.save_pretrained(str(directory))


def hf_logits(directory: Path, tokens: torch.Tensor) -> torch.Tensor:
    model = transformers.AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32)
    with torch.no_grad():
        return model(tokens).logits


def _import_all(pairs: list[tuple[str, str]]) -> list[dict]:
    from megatron_salt.convert.hf import import_hf

    return [dataclasses.asdict(import_hf(src, dst)) for src, dst in pairs]


def _export(pairs: list[tuple[str, str]]) -> list[str]:
    from megatron_salt.convert.hf import export_hf

    return [export_hf(src, dst) for src, dst in pairs]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Every case: HF dir, imported checkpoint, HF reference logits on shared tokens."""
    root = tmp_path_factory.mktemp("hf_convert")
    torch.manual_seed(1)
    tokens = torch.randint(0, VOCAB_ROWS, (BATCH, SEQ))
    pairs = []
    for i, (name, (cls, kwargs)) in enumerate(CASES.items()):
        make_hf_model(root / name / "hf", cls, kwargs, seed=i)
        pairs.append((str(root / name / "hf"), str(root / name / "ckpt")))
    configs = run_on_ranks(_import_all, 1, pairs)[0]
    refs = {name: hf_logits(root / name / "hf", tokens) for name in CASES}
    return root, tokens, configs, refs


def teacher_logits(ckpts: list[str], tp: int, pp: int, tokens: torch.Tensor) -> list:
    """Full-vocab logits [b, s, v] of each checkpoint through Teacher at TP x PP."""
    import torch.distributed as dist
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    from megatron_salt.checkpoint_dir import load_model_config, resolve_checkpoint
    from megatron_salt.config import PrecisionConfig
    from megatron_salt.teacher import Teacher

    batch_size, seq = tokens.shape
    parallel_state.initialize_model_parallel(tp, pp)
    model_parallel_cuda_manual_seed(0)
    out = []
    for ckpt in ckpts:
        cfg = dataclasses.replace(load_model_config(resolve_checkpoint(ckpt)), seq_length=seq)
        teacher = Teacher.from_checkpoint(
            ckpt,
            student_cfg=cfg,
            tensor_model_parallel_size=tp,
            pipeline_model_parallel_size=pp,
            precision=PrecisionConfig(),
            micro_batch_size=batch_size,
        )
        batch = {
            "tokens": tokens,
            "labels": tokens,
            "position_ids": torch.arange(seq).unsqueeze(0).expand(batch_size, -1),
        }
        logits = teacher.forward(batch)
        teacher.finish_step()
        if logits is not None:
            group = parallel_state.get_tensor_model_parallel_group()
            shards = [torch.empty_like(logits) for _ in range(tp)]
            dist.all_gather(shards, logits.contiguous(), group=group)
            logits = torch.cat(shards, dim=-1).transpose(0, 1).contiguous()
        out.append(logits)
        teacher.release()
    return out


@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 1), (1, 2)], ids=["tp1", "tp2", "pp2"])
def test_imported_logits_match_transformers(converted, tp, pp):
    root, tokens, _, refs = converted
    ckpts = [str(root / name / "ckpt") for name in CASES]
    per_rank = run_on_ranks(teacher_logits, tp * pp, ckpts, tp, pp, tokens)
    got = per_rank[-1]  # the last rank holds the last stage
    for name, logits in zip(CASES, got, strict=True):
        diff = (logits - refs[name]).abs().max().item()
        assert diff <= TOLERANCE, f"{name} at TP={tp} PP={pp}: max |diff| {diff:.2e}"


def test_imported_config_and_layout(converted):
    root, _, configs, _ = converted
    by_name = dict(zip(CASES, configs, strict=True))
    assert by_name["llama_gqa_untied"]["num_query_groups"] == 2
    assert by_name["llama_gqa_untied"]["rotary_base"] == 50000
    assert by_name["llama3_scaled_tied"]["rope_scaling"] is True
    assert by_name["llama3_scaled_tied"]["rope_scaling_factor"] == 32.0
    # positions as config.json allows, the default scoring window capped
    assert by_name["llama3_scaled_tied"]["max_position_embeddings"] == 16384
    assert by_name["llama3_scaled_tied"]["seq_length"] == 4096
    assert by_name["pythia"]["seq_length"] == 256
    assert not by_name["llama3_scaled_tied"]["untie_embeddings_and_output_weights"]
    assert by_name["qwen2_bias"]["add_qkv_bias"] and not by_name["qwen2_bias"]["add_bias_linear"]
    assert (
        by_name["pythia"]["use_parallel_residual"] and by_name["pythia"]["rotary_percent"] == 0.25
    )
    assert not by_name["neox_sequential"]["use_parallel_residual"]
    for cfg in configs:
        assert cfg["trained_padded_vocab_size"] == VOCAB_ROWS
    ckpt = root / "pythia" / "ckpt"
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == "0"
    assert (ckpt / "iter_0000000" / "model_config.json").is_file()
    assert not list(root.glob("*/*.partial"))


@pytest.fixture(scope="module")
def exported(converted):
    root, *_ = converted
    pairs = [(str(root / name / "ckpt"), str(root / name / "export")) for name in CASES]
    archs = run_on_ranks(_export, 1, pairs)[0]
    return root, archs


def test_import_then_export_is_bitwise(exported):
    from safetensors.torch import load_file

    root, archs = exported
    for name, arch in zip(CASES, archs, strict=True):
        original = load_file(str(root / name / "hf" / "model.safetensors"))
        back = load_file(str(root / name / "export" / "model.safetensors"))
        assert set(back) == set(original), name
        for key, tensor in original.items():
            assert back[key].dtype == tensor.dtype and torch.equal(back[key], tensor), (name, key)
        config = json.loads((root / name / "export" / "config.json").read_text())
        assert config["architectures"] == [arch] == [EXPORTED_AS[CASES[name][0]]]


def test_exported_model_computes_the_same_in_transformers(converted, exported):
    root, tokens, _, refs = converted
    for name in CASES:
        got = hf_logits(root / name / "export", tokens)
        assert torch.equal(got, refs[name]), name


def test_export_shards_large_models_with_an_index(converted, tmp_path):
    from safetensors.torch import load_file

    root, *_ = converted
    out = tmp_path / "sharded"
    from megatron_salt.convert.hf import export_hf

    run_on_ranks(lambda: export_hf(root / "pythia" / "ckpt", out, max_shard_bytes=20_000), 1)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    original = load_file(str(root / "pythia" / "hf" / "model.safetensors"))
    merged = {}
    for shard in shards:
        merged.update(load_file(str(out / shard)))
    assert set(merged) == set(original)
    assert all(torch.equal(merged[k], v) for k, v in original.items())


# --- refusals and the CLI ------------------------------------------------------------


def _cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "tools" / "convert_checkpoint.py"), *argv],
        capture_output=True,
        text=True,
        timeout=300,
    )


REFUSED = {
    "sliding_window": ("MistralConfig", dict(sliding_window=16)),
    "rope_scaling.rope_type": ("LlamaConfig", dict(rope_scaling={"rope_type": "yarn",
                                                                "factor": 4.0})),
    "hidden_act": ("GPTNeoXConfig", dict(hidden_act="gelu_new")),
}  # fmt: skip


def test_cli_refuses_unsupported_fields_in_one_line(tmp_path):
    from megatron_salt.convert.errors import ConversionError
    from megatron_salt.convert.hf import read_hf_model

    for field, (cls, kwargs) in REFUSED.items():
        hf = tmp_path / field
        config = getattr(transformers, cls)(hidden_size=32, intermediate_size=64,
                                            num_attention_heads=4, num_hidden_layers=1,
                                            vocab_size=64, **kwargs)  # fmt: skip
        config.architectures = [cls.replace("Config", "ForCausalLM")]
        config.save_pretrained(str(hf))
        with pytest.raises(ConversionError, match=field.replace(".", r"\.")):
            read_hf_model(hf)
    # MoE and qk-norm never reach a model class of ours: refused from config.json alone.
    raw = json.loads((tmp_path / "hidden_act" / "config.json").read_text())
    for field, value in (("num_local_experts", 8), ("qk_norm", True)):
        bad = tmp_path / f"raw_{field}"
        bad.mkdir()
        (bad / "config.json").write_text(json.dumps({**raw, "hidden_act": "gelu", field: value}))
        with pytest.raises(ConversionError, match=field):
            read_hf_model(bad)
    del raw["num_hidden_layers"]
    (tmp_path / "raw_qk_norm" / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ConversionError, match="'num_hidden_layers'"):
        read_hf_model(tmp_path / "raw_qk_norm")
    # The real CLI: one line, exit status 2, nothing written.
    result = _cli("import-hf", "--hf-dir", str(tmp_path / "sliding_window"),
                  "--save", str(tmp_path / "out"))  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "sliding_window=16" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_cli_refuses_to_overwrite(converted, tmp_path, capsys):
    """CLI import-hf and export-hf succeed in tests/test_convert_runs.py; here the refusal."""
    from megatron_salt.convert.cli import main

    root, *_ = converted
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["export-hf", "--load", str(root / "pythia" / "ckpt"), "--hf-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists and is not empty" in err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert not (tmp_path / "hf.partial").exists()


def _bf16_roundtrip(hf: str, out: str) -> None:
    from megatron_salt.convert.hf import export_hf, import_hf

    import_hf(hf, f"{out}/ckpt", dtype="bf16")
    export_hf(f"{out}/ckpt", f"{out}/fp32", dtype="fp32")
    export_hf(f"{out}/ckpt", f"{out}/bf16", dtype="bf16")


def test_bf16_import_keeps_bf16_values(converted, tmp_path):
    from safetensors.torch import load_file

    root, *_ = converted
    run_on_ranks(_bf16_roundtrip, 1, str(root / "llama_gqa_untied" / "hf"), str(tmp_path))
    original = load_file(str(root / "llama_gqa_untied" / "hf" / "model.safetensors"))
    as_fp32 = load_file(str(tmp_path / "fp32" / "model.safetensors"))
    as_bf16 = load_file(str(tmp_path / "bf16" / "model.safetensors"))
    for key, tensor in original.items():
        assert torch.equal(as_bf16[key], tensor.bfloat16()), key
        assert torch.equal(as_fp32[key], tensor.bfloat16().float()), key
