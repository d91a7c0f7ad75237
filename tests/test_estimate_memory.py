"""examples/pile_2p8b_1p5b/estimate_memory.py: its parameter accounting is the real model's,
its memory terms follow the published formulas and move the right way, and it prints the table.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import pytest

from megatron_salt.config import ModelConfig
from megatron_salt.testing import run_on_ranks

EXAMPLE_DIR = Path(__file__).resolve().parents[1] / "examples" / "pile_2p8b_1p5b"


def _load_estimator():
    spec = importlib.util.spec_from_file_location(
        "estimate_memory", EXAMPLE_DIR / "estimate_memory.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


em = _load_estimator()

# Two small architectures that differ in everything num_parameters() distinguishes.
# vocab 1100 pads to 1152 at TP=1 and 1280 at TP=2.
SMALL_CONFIGS = {
    "layernorm-bias-untied-rope": ModelConfig(
        num_layers=4,
        hidden_size=64,
        num_attention_heads=4,
        ffn_hidden_size=256,
        seq_length=32,
        vocab_size=1100,
        untie_embeddings_and_output_weights=True,
    ),
    "rmsnorm-swiglu-gqa-nobias-tied-learned": ModelConfig(
        num_layers=4,
        hidden_size=64,
        num_attention_heads=4,
        num_query_groups=2,
        ffn_hidden_size=96,
        seq_length=32,
        vocab_size=1100,
        normalization="RMSNorm",
        swiglu=True,
        add_bias_linear=False,
        position_embedding_type="learned_absolute",
    ),
}
LAYOUTS = [(1, 1), (2, 1), (1, 2)]  # (TP, PP) on two ranks


def _count_real_parameters():
    """Per rank: {(config, tp, pp): (all parameters, TP-sharded parameters)} of real GPTModels."""
    from megatron.core import parallel_state as ps

    from megatron_salt.config import ParallelConfig, PrecisionConfig
    from megatron_salt.model import build_gpt_model, transformer_config

    counts = {}
    for tp, pp in LAYOUTS:
        ps.destroy_model_parallel()
        ps.initialize_model_parallel(tp, pp)
        for name, cfg in SMALL_CONFIGS.items():
            model = build_gpt_model(
                cfg,
                transformer_config(cfg, ParallelConfig(tp, pp), PrecisionConfig()),
                pre_process=ps.is_pipeline_first_stage(),
                post_process=ps.is_pipeline_last_stage(),
            )
            params = list(model.parameters())
            sharded = [p for p in params if getattr(p, "tensor_model_parallel", False)]
            counts[(name, tp, pp)] = (
                sum(p.numel() for p in params),
                sum(p.numel() for p in sharded),
            )
    return counts


@pytest.fixture(scope="module")
def real_counts():
    return run_on_ranks(_count_real_parameters, 2)


@pytest.mark.parametrize("name", list(SMALL_CONFIGS))
def test_parameter_accounting_matches_real_gpt_model(real_counts, name):
    cfg = SMALL_CONFIGS[name]
    for tp, pp in LAYOUTS:
        counts = em.ParameterCounts.from_config(cfg, tp)
        # The estimator's total is num_parameters() at the padded vocabulary.
        padded = dataclasses.replace(cfg, vocab_size=cfg.padded_vocab_size(tp))
        assert counts.total == padded.num_parameters()
        for rank in range(2):
            stage = rank if pp == 2 else 0
            real_total, _ = real_counts[rank][(name, tp, pp)]
            assert counts.per_rank(tp, pp, stage) == real_total, (name, tp, pp, rank)

    # TP=2: the shards of both ranks plus one copy of the replicated parameters
    # (norms, row-parallel biases) are the whole model.
    (total0, sharded0), (total1, sharded1) = (real_counts[r][(name, 2, 1)] for r in range(2))
    assert total0 - sharded0 == total1 - sharded1
    assert sharded0 + sharded1 + (total0 - sharded0) == em.ParameterCounts.from_config(cfg, 2).total

    # PP=2: the stages add up to the model, plus the last stage's copy of tied embeddings.
    counts = em.ParameterCounts.from_config(cfg, 1)
    stages = real_counts[0][(name, 1, 2)][0] + real_counts[1][(name, 1, 2)][0]
    tied_copy = 0 if cfg.untie_embeddings_and_output_weights else counts.word_embedding
    assert stages == counts.total + tied_copy


def test_example_parameter_counts():
    """The sizes config.sh states: Pythia-2.8B's count for the student, ~1.5B for the teacher."""
    student, teacher = (
        em.estimate_from_args("x", em.train_sh_args(mode), world_size=8).without_teacher[0]
        for mode in ("baseline", "teacher")
    )
    args = em.build_parser().parse_args(em.train_sh_args("baseline"))
    cfg = em.model_config_from_args(args, em.GPT_NEOX_VOCAB_SIZE)
    assert em.ParameterCounts.from_config(cfg, 1).total == 2_775_208_960
    t_args = em.build_parser().parse_args(em.train_sh_args("teacher"))
    t_cfg = em.model_config_from_args(t_args, em.GPT_NEOX_VOCAB_SIZE)
    assert em.ParameterCounts.from_config(t_cfg, 1).total == 1_515_364_352
    # bf16 weights without FP8 caches would be 2 bytes per parameter; with FP8 more.
    assert student.weights > 2 * 2_775_208_960
    assert teacher.weights > 2 * 1_515_364_352


def _layout(tp=1, pp=1, **overrides):
    shape = dict(num_layers=8, hidden_size=1024, num_attention_heads=16)
    cfg = ModelConfig(seq_length=2048, vocab_size=50277, **{**shape, **overrides})
    return em.ModelLayout(cfg, tp, pp)


def test_activations_reproduce_korthikanti():
    """f=4h, MHA, dropout, unfused attention: s*b*h*(10 + 24/t + 5as/(ht)) bytes per layer."""
    layout = _layout(hidden_dropout=0.1, attention_dropout=0.1)
    cfg = layout.config
    shape = em.StepShape(micro_batch_size=2, seq_length=2048)
    s, b, h, a = 2048, 2, cfg.hidden_size, cfg.num_attention_heads
    for t in (1, 2, 4, 8):
        expected = s * b * h * (10 + 24 / t + 5 * a * s / (h * t))
        assert em.layer_activation_bytes(cfg, t, shape, flash_attention=False) == expected
        # Flash attention drops the 5as/h term; no dropout drops the two 1-byte masks.
        flash = em.layer_activation_bytes(cfg, t, shape, flash_attention=True)
        assert flash == s * b * h * (10 + 24 / t)
        no_dropout = dataclasses.replace(cfg, hidden_dropout=0.0, attention_dropout=0.0)
        assert em.layer_activation_bytes(no_dropout, t, shape, True) == s * b * h * (8 + 24 / t)


def test_static_memory_is_megatrons_6_plus_12_over_d():
    layout = _layout()
    shape = em.StepShape(1, 2048)
    params = layout.counts.per_rank(1, 1, 0)
    for dp in (1, 8, 64):
        mem = em.stage_memories(layout, shape, dp)[0]
        wgrad = 2 * layout.counts.largest_weight_per_rank(layout.config, 1)
        static = mem.weights + (mem.grads - wgrad) + mem.optimizer
        assert static == pytest.approx((6 + 12 / dp) * params)


def test_memory_moves_the_right_way():
    student, teacher = _layout(tp=2), _layout(tp=1, num_layers=4)
    shape = em.StepShape(micro_batch_size=4, seq_length=2048, num_microbatches=2)

    # More data parallelism: the distributed optimizer's shard, and so the total, shrinks.
    totals = [em.peak(em.stage_memories(student, shape, dp)).total for dp in (1, 2, 8, 64)]
    assert totals == sorted(totals, reverse=True) and len(set(totals)) == 4
    no_shard = em.Assumptions(distributed_optimizer=False)
    assert em.peak(em.stage_memories(student, shape, 64, assume=no_shard)).total > totals[-1]

    # A wider teacher TP holds a smaller share of the teacher on each GPU.
    shares = []
    for teacher_tp in (1, 2):
        kd = em.KDSetup(dataclasses.replace(teacher, tensor_parallel=teacher_tp))
        shares.append(em.stage_memories(student, shape, 8, kd)[0].teacher)
    assert shares[1] < shares[0]

    # Releasing the teacher returns memory; the student's own terms stay.
    result = em.estimate("x", student, shape, 8, em.KDSetup(teacher))
    during, after = result.peak_during_kd, result.peak_without_teacher
    assert after.total < during.total
    assert after.teacher == 0 and during.teacher > 0
    assert after.logits_kd < during.logits_kd
    assert (after.weights, after.optimizer, after.activations) == (
        during.weights,
        during.optimizer,
        during.activations,
    )

    # Pipeline parallelism: the first stage holds PP micro-batches in flight, the last one.
    pp2 = dataclasses.replace(student, tensor_parallel=1, pipeline_parallel=2)
    first, last = em.stage_memories(pp2, shape, 8)
    per_layer = em.layer_activation_bytes(pp2.config, 1, shape, True)
    assert first.activations == 2 * 4 * per_layer
    assert last.activations > 4 * per_layer
    assert last.logits_kd > 0 and first.logits_kd == 0


def _phase_free(row: str) -> str:
    return row.replace(" (student backward)", "").replace(" (teacher forward)", "")


def test_script_prints_the_table(capsys):
    assert em.main(["--nodes", "8"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    header, rows = rows[0], rows[1:]
    assert "logits/KD" in header and "teacher" in header and "total" in header
    expected_rows = sum(
        (2 if run.mode == "salt" else 1) * int(run.env.get("STUDENT_PP", "1"))
        for run in em.EXAMPLE_RUNS
    )
    assert len(rows) == expected_rows
    default = [r for r in rows if r.startswith("| student 2.8B SALT (default)")]
    assert [("during KD" in r, r.rstrip(" |").endswith("yes")) for r in default] == [
        (True, True),
        (False, True),
    ]

    # The README's excerpt of the table is what the script prints today.
    printed = {_phase_free(r) for r in rows}
    readme = (EXAMPLE_DIR / "README.md").read_text()
    excerpt = [r for r in readme.splitlines() if r.startswith("| ") and "GiB" not in r]
    excerpt = [r for r in excerpt if r.split(" | ")[0][2:] in {e.label for e in em.EXAMPLE_RUNS}]
    assert len(excerpt) >= 8
    stale = [r for r in excerpt if r not in printed]
    assert not stale, "README.md's memory table is stale; rerun estimate_memory.py:\n" + "\n".join(
        stale
    )
