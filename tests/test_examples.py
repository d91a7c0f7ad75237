"""examples/pile_2p8b_1p5b: the scripts are valid bash, and the command lines they build pass
pretrain_salt.py's own parser and validation, so the example cannot rot when flags change.

No GPU or cluster here: the checks run the real scripts with PRINT_ARGS / DRY_RUN, and the
SLURM launcher with stand-ins for ``srun`` and ``scontrol`` on PATH.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from torch.distributed.run import get_args_parser as torchrun_parser

from megatron_salt.training import arguments
from megatron_salt.training.arguments import build_parser, validate_args

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "pile_2p8b_1p5b"
SCRIPTS = [EXAMPLE / name for name in ("config.sh", "train.sh", "launch_slurm.sbatch")]
NODES, GPUS_PER_NODE = 8, 8

# The layouts the README and estimate_memory.py discuss, as train.sh environment settings.
LAYOUTS = [
    {},
    {"STUDENT_TP": "2"},
    {"STUDENT_TP": "2", "KD_TEACHER_TP": "2"},
    {"STUDENT_PP": "2"},
    {"STUDENT_PP": "2", "KD_TEACHER_PP": "2"},
    {"MBS": "8", "FP8_FORMAT": ""},
]


@pytest.fixture
def paths(tmp_path) -> dict[str, str]:
    """Stand-ins for the cluster's files: validation checks that they exist."""
    data = tmp_path / "pile" / "pile_train_text_document"
    data.parent.mkdir()
    for suffix in (".bin", ".idx"):
        data.with_suffix(suffix).write_bytes(b"")
    tokenizer = tmp_path / "tokenizer.json"
    tokenizer.write_text("{}")
    ckpt_root = tmp_path / "ckpt"
    (ckpt_root / "teacher_1p5b").mkdir(parents=True)
    return {
        "DATA_PREFIX": str(data),
        "TOKENIZER_JSON": str(tokenizer),
        "CKPT_ROOT": str(ckpt_root),
        "NNODES": str(NODES),
        "GPUS_PER_NODE": str(GPUS_PER_NODE),
    }


def _bash(script: Path, env: dict[str, str], *args: str, **kwargs) -> subprocess.CompletedProcess:
    clean = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run(
        ["bash", str(script), *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=30,
        **kwargs,
    )


def train_args(mode: str, env: dict[str, str]) -> list[str]:
    out = _bash(EXAMPLE / "train.sh", {**env, "MODE": mode, "PRINT_ARGS": "1"})
    assert out.returncode == 0, out.stderr
    return out.stdout.split("\0")[:-1]


def test_scripts_are_valid_bash():
    for script in SCRIPTS:
        out = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert out.returncode == 0, f"{script.name}: {out.stderr}"
    if shutil.which("shellcheck") is None:
        return  # optional tool; `bash -n` above is the required check
    out = subprocess.run(
        ["shellcheck", "-x", *(s.name for s in SCRIPTS)],
        cwd=EXAMPLE,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout


def _layout_id(env: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in env.items()) or "default"


@pytest.mark.parametrize("layout", LAYOUTS, ids=_layout_id)
def test_command_lines_validate(paths, layout, monkeypatch):
    # FP8 needs Transformer Engine, which cannot import without a GPU: the structural
    # checks of validate_args are what this test is about.
    monkeypatch.setattr(arguments, "have_transformer_engine", lambda: True)
    env = {**paths, **layout}
    world = NODES * GPUS_PER_NODE
    parsed = {}
    for mode in ("teacher", "baseline", "salt"):
        args = build_parser().parse_args(train_args(mode, env))
        validate_args(args, world_size=world)
        parsed[mode] = args
        assert args.save == args.load  # a requeued job resumes
        assert args.bf16 and args.use_distributed_optimizer
        assert args.fp8_format == (None if layout.get("FP8_FORMAT") == "" else "hybrid")
        assert args.lr_decay_style == "cosine" and args.lr_decay_iters == args.train_iters
        assert args.global_batch_size == 512 and args.seq_length == 2048
        assert args.tokenizer_type == "HuggingFaceTokenizer"
        assert args.data_path == [paths["DATA_PREFIX"]]
        assert args.num_microbatches * args.micro_batch_size * args.data_parallel_size == 512

    salt, baseline, teacher = parsed["salt"], parsed["baseline"], parsed["teacher"]
    # SALT and baseline: the same student, data and schedule; only the KD flags differ.
    differing = {k for k in vars(salt) if getattr(salt, k) != getattr(baseline, k)}
    assert {k for k in differing if not k.startswith("kd_")} == {
        "save",
        "load",
        "wandb_exp_name",
    }
    assert salt.wandb_group == baseline.wandb_group != teacher.wandb_group
    assert salt.wandb_project == baseline.wandb_project == teacher.wandb_project
    # The paper's schedule: n_KD = 36K of 208K steps, w = 0.5 with a hard switch.
    assert (salt.train_iters, salt.kd_iters, salt.kd_alpha) == (208_000, 36_000, 0.5)
    assert (salt.kd_schedule, salt.kd_temperature, salt.kd_top_k) == ("constant", 1.0, None)
    assert salt.kd_teacher_load == teacher.save
    assert baseline.kd_teacher_load is None and baseline.kd_iters == 0
    assert salt.tensor_model_parallel_size == int(layout.get("STUDENT_TP", 1))
    assert salt.pipeline_model_parallel_size == int(layout.get("STUDENT_PP", 1))
    assert salt.kd_teacher_tensor_model_parallel_size == int(layout.get("KD_TEACHER_TP", 1))
    assert salt.kd_teacher_pipeline_model_parallel_size == int(layout.get("KD_TEACHER_PP", 1))


def test_torchrun_command(paths):
    out = _bash(EXAMPLE / "train.sh", {**paths, "MODE": "salt", "DRY_RUN": "1"})
    assert out.returncode == 0, out.stderr
    command = shlex.split(out.stdout)
    assert command[0] == "torchrun"
    launch = torchrun_parser().parse_args(command[1:])
    assert (launch.nnodes, launch.nproc_per_node) == (str(NODES), str(GPUS_PER_NODE))
    assert (launch.rdzv_backend, launch.rdzv_endpoint) == ("c10d", "localhost:29500")
    assert Path(launch.training_script) == REPO / "pretrain_salt.py"
    assert launch.training_script_args == train_args("salt", paths)


@pytest.fixture
def scored_paths(paths) -> dict[str, str]:
    """``paths`` with a real (tiny) DATA_PREFIX, its window scores and Pile subset ids, as
    ``MODE=score`` and tools/preprocess_pile.py would leave them."""
    import numpy as np
    import torch
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    from megatron_salt.selection.sidecar import (
        BinFingerprint,
        ScoreHeader,
        idx_fingerprint,
        write_scores,
    )

    prefix = paths["DATA_PREFIX"]
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=DType.optimal_dtype(50277))
    lengths = [2500, 4200, 900]  # 2048-token windows: 2, 3 and 1
    for n in lengths:
        builder.add_document(torch.arange(n) % 50000, [n])
    builder.finalize(prefix + ".idx")
    fp = BinFingerprint.of(prefix)
    header = ScoreHeader(
        "teacher", 1, "f", 10, "median", 2048, idx_fingerprint(prefix), 3, 6,
        bin_size=fp.size, bin_blake2b=fp.blake2b, bin_sampled=fp.sampled,
        bin_mtime_ns=fp.mtime_ns, unit="window", num_windows=6, min_window_fill=0.5,
    )  # fmt: skip
    write_scores(prefix, np.arange(6, dtype=np.float32), header)
    np.save(prefix + ".subsets.npy", np.array([0, 1, 0], dtype=np.int16))
    return paths


def test_salt_ds_mode_command_lines(scored_paths, monkeypatch):
    """MODE=score builds a score_data.py command line for the teacher and DATA_PREFIX, and
    MODE=salt_ds is MODE=salt plus the selection flags, passing pretrain_salt.py's checks."""
    from megatron_salt.selection.cli import build_score_parser

    monkeypatch.setattr(arguments, "have_transformer_engine", lambda: True)
    env = scored_paths
    salt = build_parser().parse_args(train_args("salt", env))
    salt_ds = build_parser().parse_args(train_args("salt_ds", env))
    validate_args(salt_ds, world_size=NODES * GPUS_PER_NODE)
    differing = {k for k in vars(salt) if getattr(salt, k) != getattr(salt_ds, k)}
    assert differing == {
        "save", "load", "wandb_exp_name", "kd_data_path", "kd_data_selection",
        "kd_data_selection_by",
    }  # fmt: skip
    assert salt_ds.kd_data_path == [env["DATA_PREFIX"]]
    assert (salt_ds.kd_data_selection, salt_ds.kd_data_selection_by) == ("top:0.5", "subset")
    assert salt_ds.save.endswith("salt_ds_2p8b_w0.5_nkd36000_constant_window_top0.5_bysubset")

    score = build_score_parser().parse_args(train_args("score", env))
    assert score.load == salt_ds.kd_teacher_load and score.data_path == [env["DATA_PREFIX"]]
    assert (score.score_unit, score.score_seq_length) == ("window", salt_ds.seq_length)
    assert (score.score_top_k, score.score_statistic, score.bf16) == (10, "median", True)

    out = _bash(EXAMPLE / "train.sh", {**env, "MODE": "score", "DRY_RUN": "1"})
    assert out.returncode == 0, out.stderr
    launch = torchrun_parser().parse_args(shlex.split(out.stdout)[1:])
    assert Path(launch.training_script) == REPO / "tools" / "score_data.py"
    assert launch.training_script_args == train_args("score", env)
    # Document scores, or the global ranking, are one environment setting away.
    other = {**env, "SCORE_UNIT": "document", "KD_DATA_SELECTION_BY": "global"}
    assert "document" in train_args("score", other)
    assert "global" in train_args("salt_ds", other)


def test_estimate_cost_counts_the_scoring_job(paths):
    import importlib.util

    spec = importlib.util.spec_from_file_location("estimate_cost", EXAMPLE / "estimate_cost.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    costs, source = module.example_costs(paths)
    assert source.startswith("assumed")  # no summary.json beside the stand-in prefix
    by_label = {c.label.split(" (")[0]: c for c in costs}
    teacher_n, student_n = 1_515_364_352, 2_775_208_960  # README's parameter counts
    student = by_label["student 2.8B"]
    assert (student.parameters, student.tokens) == (student_n, 208_000 * 512 * 2048)
    assert student.flops == 6 * student_n * student.tokens
    kd = by_label["teacher forward during KD"]
    assert kd.flops == 2 * teacher_n * 36_000 * 512 * 2048
    scoring = by_label["scoring"]
    assert scoring.flops == 2 * teacher_n * 300e9
    assert 0.24 < scoring.flops / student.flops < 0.26  # "about a quarter" (issue 13)
    Path(paths["DATA_PREFIX"] + ".summary.json").write_text('{"total": {"tokens": 1000}}')
    costs, source = module.example_costs(paths)
    assert source.endswith(".summary.json") and costs[-1].tokens == 1000


def test_unknown_mode_is_one_line_error(paths):
    out = _bash(EXAMPLE / "train.sh", {**paths, "MODE": "distill"})
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "train.sh: MODE must be teacher, baseline, salt, score or salt_ds (got 'distill')"
    )


def _fake_slurm(bin_dir: Path, log: Path) -> None:
    """``scontrol`` that lists two hosts and logs requeues; ``srun`` that runs its command
    once with DRY_RUN=1, then waits for a stop file (a training job that is running)."""
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(
        "#!/bin/bash\n"
        'if [[ $1 == show ]]; then printf "gpu-node-017\\ngpu-node-018\\n"; fi\n'
        f'if [[ $1 == requeue ]]; then echo "requeue $2" >> {log}; fi\n'
    )
    (bin_dir / "srun").write_text(
        "#!/bin/bash\n"
        f'echo "srun $*" >> {log}\n'
        "while [[ $1 == -* ]]; do shift; done\n"
        'DRY_RUN=1 "$@"\n'
        f'echo "started" >> {log}\n'
        f"for _ in $(seq 100); do [[ -f {log}.stop ]] && exit 0; sleep 0.1; done\n"
    )
    for tool in ("scontrol", "srun"):
        (bin_dir / tool).chmod(0o755)


def test_slurm_launcher_requeues_and_rendezvous(paths, tmp_path):
    log = tmp_path / "slurm.log"
    _fake_slurm(tmp_path / "bin", log)
    env = {
        **paths,
        "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}",
        "MODE": "baseline",
        "SLURM_JOB_ID": "4242",
        "SLURM_NNODES": "2",
        "SLURM_JOB_NODELIST": "gpu-node-[017-018]",
        "SLURM_SUBMIT_DIR": str(REPO),
    }
    del env["NNODES"]  # taken from SLURM_NNODES, as on a cluster
    proc = subprocess.Popen(
        ["bash", str(EXAMPLE / "launch_slurm.sbatch")],
        env={"HOME": os.environ.get("HOME", "/tmp"), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20

        def logged() -> str:
            return log.read_text() if log.exists() else ""

        def wait_for(text: str) -> None:
            while text not in logged():
                exited = proc.poll() is not None
                assert text in logged() or not exited, proc.communicate()
                assert time.monotonic() < deadline, f"no {text!r} in {logged()!r}"
                time.sleep(0.05)

        wait_for("started")  # srun is running the job
        proc.send_signal(signal.SIGUSR1)  # what SLURM sends 10 minutes before the limit
        wait_for("requeue")
        log.with_name(log.name + ".stop").write_text("")  # the job step ends
        stdout, stderr = proc.communicate(timeout=20)
    finally:
        log.with_name(log.name + ".stop").write_text("")
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert f"requeue {env['SLURM_JOB_ID']}" in log.read_text(), stderr
    assert "srun --ntasks-per-node=1" in log.read_text()
    torchrun = next(line for line in stdout.splitlines() if line.startswith("torchrun"))
    launch = torchrun_parser().parse_args(shlex.split(torchrun)[1:])
    assert launch.nnodes == "2" and launch.rdzv_id == "4242"
    assert launch.rdzv_endpoint == f"gpu-node-017:{20000 + 4242 % 20000}"
    assert "--load" in launch.training_script_args


# Pythia's config.json values (EleutherAI/pythia-2.8b and pythia-1.4b, 4.x key names).
PYTHIA = {
    "pythia-2.8b": dict(num_hidden_layers=32, hidden_size=2560, num_attention_heads=32,
                        intermediate_size=10240),
    "pythia-1.4b": dict(num_hidden_layers=24, hidden_size=2048, num_attention_heads=16,
                        intermediate_size=8192),
}  # fmt: skip
PYTHIA_COMMON = dict(
    architectures=["GPTNeoXForCausalLM"], hidden_act="gelu", rotary_pct=0.25,
    rotary_emb_base=10000, max_position_embeddings=2048, vocab_size=50304,
    use_parallel_residual=True, layer_norm_eps=1e-5, tie_word_embeddings=False,
)  # fmt: skip
ARCHITECTURE_FIELDS = (
    "num_layers", "hidden_size", "num_attention_heads", "ffn_hidden_size", "num_query_groups",
    "position_embedding_type", "rotary_base", "rotary_percent", "rope_scaling", "normalization",
    "norm_epsilon", "swiglu", "add_bias_linear", "add_qkv_bias", "use_parallel_residual",
    "untie_embeddings_and_output_weights", "vocab_size",
)  # fmt: skip


def test_student_is_pythia_2p8b_and_pythia_is_a_drop_in_teacher(paths):
    """The recipe's student is exactly what import-hf makes of Pythia-2.8B's config.json,
    and an imported Pythia-1.4B shares the student's conventions, tokenizer and padding."""
    from megatron_salt.convert.hf_config import model_config_from_hf
    from megatron_salt.training.arguments import model_config_from_args

    neox_vocab = 50277
    student = model_config_from_args(
        build_parser().parse_args(train_args("baseline", paths)), neox_vocab
    )
    for name, shape in PYTHIA.items():
        pythia = model_config_from_hf(
            {**PYTHIA_COMMON, **shape}, source=name, tokenizer_vocab_size=neox_vocab
        ).model_cfg
        if name == "pythia-2.8b":
            for field in ARCHITECTURE_FIELDS:
                assert getattr(student, field) == getattr(pythia, field), field
        assert pythia.padded_vocab_size(1) == student.padded_vocab_size(1) == 50304
        for field in ARCHITECTURE_FIELDS[5:]:
            assert getattr(student, field) == getattr(pythia, field), (name, field)
