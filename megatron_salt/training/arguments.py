"""Command-line flags of ``pretrain_salt.py``: Megatron-LM's names, plus ``--kd-*``.

A Megatron user should be able to take an existing ``pretrain_gpt.py`` command
line, drop the flags SALT does not implement, and add a teacher. Unknown or
inconsistent flags end the run with one line naming the flag.
"""

from __future__ import annotations

import argparse
import os
from typing import NoReturn

from megatron_salt.compat import have_transformer_engine
from megatron_salt.config import KDConfig, ModelConfig
from megatron_salt.distill.schedule import KD_SCHEDULES


class FlagError(SystemExit):
    """A bad command line: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise FlagError(f"{self.prog}: error: {message} (see --help)")


def build_parser(prog: str = "pretrain_salt.py") -> argparse.ArgumentParser:
    parser = _Parser(
        prog=prog,
        description="Megatron-Core GPT pretraining with SALT (KD from a small LM, early)",
        allow_abbrev=False,
    )
    model = parser.add_argument_group("model")
    model.add_argument("--num-layers", type=int, required=True)
    model.add_argument("--hidden-size", type=int, required=True)
    model.add_argument("--ffn-hidden-size", type=int, default=None, help="default 4*hidden")
    model.add_argument("--num-attention-heads", type=int, required=True)
    model.add_argument("--group-query-attention", action="store_true")
    model.add_argument("--num-query-groups", type=int, default=None)
    model.add_argument("--seq-length", type=int, required=True)
    model.add_argument("--max-position-embeddings", type=int, default=None)
    model.add_argument(
        "--position-embedding-type", choices=["rope", "learned_absolute"], default="rope"
    )
    model.add_argument("--rotary-base", type=int, default=10000)
    model.add_argument("--rotary-percent", type=float, default=1.0)
    model.add_argument(
        "--use-rope-scaling", action="store_true", help="Llama 3.x rope frequency scaling"
    )
    model.add_argument("--rope-scaling-factor", type=float, default=8.0)
    model.add_argument("--normalization", choices=["LayerNorm", "RMSNorm"], default="LayerNorm")
    model.add_argument("--norm-epsilon", type=float, default=1e-5)
    model.add_argument("--swiglu", action="store_true")
    model.add_argument("--disable-bias-linear", action="store_true")
    model.add_argument("--add-qkv-bias", action="store_true", help="q/k/v biases (Qwen2)")
    model.add_argument(
        "--use-parallel-residual",
        action="store_true",
        help="GPT-NeoX/Pythia layers: x + attn(ln1(x)) + mlp(ln2(x))",
    )
    model.add_argument("--untie-embeddings-and-output-weights", action="store_true")
    model.add_argument("--hidden-dropout", type=float, default=0.1)
    model.add_argument("--attention-dropout", type=float, default=0.1)
    model.add_argument("--init-method-std", type=float, default=0.02)
    model.add_argument("--make-vocab-size-divisible-by", type=int, default=128)

    train = parser.add_argument_group("training")
    train.add_argument("--micro-batch-size", type=int, required=True)
    train.add_argument("--global-batch-size", type=int, default=None)
    train.add_argument("--train-iters", type=int, required=True)
    train.add_argument("--seed", type=int, default=1234)
    train.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    train.add_argument("--lr", type=float, required=True)
    train.add_argument("--min-lr", type=float, default=0.0)
    train.add_argument(
        "--lr-decay-style",
        choices=["constant", "linear", "cosine", "inverse-square-root"],
        default="linear",
    )
    train.add_argument("--lr-warmup-iters", type=int, default=0)
    train.add_argument("--lr-decay-iters", type=int, default=None, help="default --train-iters")
    train.add_argument("--weight-decay", type=float, default=0.01)
    train.add_argument("--clip-grad", type=float, default=1.0)
    train.add_argument("--adam-beta1", type=float, default=0.9)
    train.add_argument("--adam-beta2", type=float, default=0.999)
    train.add_argument("--adam-eps", type=float, default=1e-8)
    train.add_argument("--sgd-momentum", type=float, default=0.9)

    par = parser.add_argument_group("parallelism and precision")
    par.add_argument("--tensor-model-parallel-size", type=int, default=1)
    par.add_argument("--pipeline-model-parallel-size", type=int, default=1)
    par.add_argument("--use-distributed-optimizer", action="store_true")
    par.add_argument("--bf16", action="store_true")
    par.add_argument(
        "--fp8-format",
        choices=["e4m3", "hybrid"],
        default=None,
        help="FP8 through Transformer Engine for student and teacher (needs --bf16 and TE)",
    )
    par.add_argument("--fp8-recipe", choices=["delayed", "tensorwise", "mxfp8"], default="delayed")
    par.add_argument(
        "--distributed-backend", choices=["nccl", "gloo"], default=None, help="default: nccl on GPU"
    )

    data = parser.add_argument_group("data")
    data.add_argument(
        "--data-path",
        nargs="+",
        default=None,
        help="Megatron .bin/.idx prefixes, optionally weighted: 'P' or 'W1 P1 W2 P2 ...'",
    )
    data.add_argument("--split", default="969,30,1")
    data.add_argument("--data-cache-path", default=None)
    data.add_argument("--tokenizer-type", default=None)
    data.add_argument("--tokenizer-model", default=None)
    data.add_argument("--eod-mask-loss", action="store_true")

    ckpt = parser.add_argument_group("checkpointing")
    ckpt.add_argument("--save", default=None)
    ckpt.add_argument("--load", default=None)
    ckpt.add_argument("--save-interval", type=int, default=None)
    ckpt.add_argument("--exit-interval", type=int, default=None)
    ckpt.add_argument("--no-load-optim", action="store_true")
    ckpt.add_argument("--no-load-rng", action="store_true")
    ckpt.add_argument(
        "--exit-signal-handler",
        action="store_true",
        help="on SIGTERM, finish the step, save a checkpoint (with --save) and exit",
    )
    ckpt.add_argument(
        "--no-ckpt-verify",
        action="store_true",
        help="skip checking --load and --kd-teacher-load against their manifest.json (each "
        "file's size and blake2b; the log says it was skipped)",
    )
    ckpt.add_argument(
        "--ckpt-load-fallback",
        action="store_true",
        help="if the latest checkpoint in --load is damaged, resume from the newest complete "
        "one (the log names it); default: a damaged latest checkpoint is an error",
    )
    ckpt.add_argument(
        "--finetune",
        action="store_true",
        help="load only the model weights from --load; start at iteration 0 with a fresh "
        "optimizer, LR schedule, RNG and data position",
    )

    log = parser.add_argument_group("evaluation and logging")
    log.add_argument(
        "--debug",
        action="store_true",
        help="print the traceback of a failure, not just its one-line error (or SALT_DEBUG=1)",
    )
    log.add_argument("--eval-interval", type=int, default=1000)
    log.add_argument("--eval-iters", type=int, default=100)
    log.add_argument("--log-interval", type=int, default=100)
    log.add_argument("--wandb-project", default=None)
    log.add_argument("--wandb-exp-name", default=None)
    log.add_argument("--wandb-save-dir", default=None)
    log.add_argument(
        "--wandb-group",
        default=None,
        help="wandb group; default: one group per student model and data, so SALT and baseline "
        "runs of the same setup share charts",
    )

    kd = parser.add_argument_group("SALT knowledge distillation")
    kd.add_argument(
        "--kd-teacher-load",
        default=None,
        help="the SLM: a pretrain_salt.py checkpoint, one made by tools/convert_checkpoint.py "
        "import-hf, or a Megatron-LM torch_dist checkpoint",
    )
    kd.add_argument("--kd-teacher-tensor-model-parallel-size", type=int, default=None)
    kd.add_argument("--kd-teacher-pipeline-model-parallel-size", type=int, default=1)
    kd.add_argument("--kd-alpha", type=float, default=0.5, help="w in (1-w)*CE + w*KD")
    kd.add_argument("--kd-temperature", type=float, default=1.0)
    kd.add_argument("--kd-top-k", type=int, default=None, help="teacher top-k (default full vocab)")
    kd.add_argument("--kd-iters", type=int, default=None, help="n_KD: steps with the teacher")
    kd.add_argument("--kd-schedule", choices=list(KD_SCHEDULES), default="constant")
    kd.add_argument("--kd-data-path", nargs="+", default=None)
    kd.add_argument(
        "--kd-data-selection",
        default=None,
        help="'top:F' or 'range:LO:HI' on the SLM score quantiles of --kd-data-path",
    )
    kd.add_argument(
        "--kd-data-selection-check",
        choices=["quick", "full"],
        default="quick",
        help="how the scores are checked against each .bin: quick (size, sampled blocks, and "
        "the whole-file hash if the .bin was rewritten since scoring) or full (always hash it)",
    )
    kd.add_argument(
        "--kd-data-selection-by",
        choices=["global", "subset"],
        default="global",
        help="global: one ranking over each prefix; subset: the rule applied within each Pile "
        "subset ({prefix}.subsets.npy), so every subset keeps the same fraction of its units",
    )
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and validate; any problem raises :class:`FlagError` (one line)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        validate_args(args, world_size=int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError as err:
        raise FlagError(f"{parser.prog}: error: {err}") from None
    return args


def validate_args(args: argparse.Namespace, world_size: int) -> None:
    """Fill Megatron-style defaults and reject inconsistent combinations (ValueError)."""
    tp, pp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size
    if tp < 1 or pp < 1:
        raise ValueError(
            "--tensor-model-parallel-size and --pipeline-model-parallel-size must be >= 1"
        )
    if world_size % (tp * pp):
        raise ValueError(f"world size {world_size} is not divisible by TP*PP = {tp}*{pp}")
    dp = world_size // (tp * pp)
    args.data_parallel_size = dp
    if args.global_batch_size is None:
        args.global_batch_size = args.micro_batch_size * dp
    if args.global_batch_size % (args.micro_batch_size * dp):
        raise ValueError(
            f"--global-batch-size {args.global_batch_size} is not a multiple of "
            f"--micro-batch-size x data-parallel size = {args.micro_batch_size} x {dp}"
        )
    args.num_microbatches = args.global_batch_size // (args.micro_batch_size * dp)
    if args.num_layers % pp:
        raise ValueError(f"--num-layers {args.num_layers} is not divisible by PP={pp}")
    if args.num_attention_heads % tp:
        raise ValueError(
            f"--num-attention-heads {args.num_attention_heads} is not divisible by TP={tp}"
        )
    if args.hidden_size % args.num_attention_heads:
        raise ValueError("--hidden-size must be divisible by --num-attention-heads")
    if args.num_query_groups is not None and not args.group_query_attention:
        raise ValueError("--num-query-groups needs --group-query-attention")
    if args.group_query_attention and (args.num_query_groups or 0) < 1:
        raise ValueError("--group-query-attention needs --num-query-groups")
    if args.max_position_embeddings is None:
        args.max_position_embeddings = args.seq_length
    if (
        args.position_embedding_type == "learned_absolute"
        and args.seq_length > args.max_position_embeddings
    ):
        raise ValueError("--seq-length exceeds --max-position-embeddings")
    if args.train_iters < 1:
        raise ValueError("--train-iters must be >= 1")
    if args.lr_decay_iters is None:
        args.lr_decay_iters = args.train_iters
    if args.min_lr > args.lr:
        raise ValueError(f"--min-lr {args.min_lr} exceeds --lr {args.lr}")
    if args.lr_warmup_iters >= args.lr_decay_iters:
        raise ValueError(
            f"--lr-warmup-iters {args.lr_warmup_iters} must be below --lr-decay-iters "
            f"{args.lr_decay_iters} (default: --train-iters)"
        )
    if args.data_path is None:
        raise ValueError("--data-path is required")
    _check_data_prefixes("--data-path", args.data_path)
    if args.tokenizer_type is None or args.tokenizer_model is None:
        raise ValueError("--tokenizer-type and --tokenizer-model are required")
    if not os.path.exists(args.tokenizer_model):
        raise ValueError(f"--tokenizer-model {args.tokenizer_model} does not exist")
    if args.save_interval is not None and args.save is None:
        raise ValueError("--save-interval needs --save")
    if args.exit_interval is not None and args.exit_interval < 1:
        raise ValueError("--exit-interval must be >= 1")
    if args.log_interval < 1 or args.eval_interval < 1:
        raise ValueError("--log-interval and --eval-interval must be >= 1")
    if args.fp8_format is not None and not args.bf16:
        raise ValueError("--fp8-format needs --bf16 (FP8 GEMMs with bf16 activations)")
    if args.fp8_format is not None and not have_transformer_engine():
        raise ValueError(
            "--fp8-format needs Transformer Engine, which does not import here (it needs a CUDA "
            "GPU and `pip install megatron-salt[te]`); drop --fp8-format to train without FP8"
        )
    if args.finetune and args.load is None:
        raise ValueError("--finetune needs --load")
    _validate_kd_args(args)


def _validate_kd_args(args: argparse.Namespace) -> None:
    kd_flags_given = [
        flag
        for flag, value in (
            ("--kd-iters", args.kd_iters),
            ("--kd-top-k", args.kd_top_k),
            ("--kd-data-path", args.kd_data_path),
            ("--kd-teacher-tensor-model-parallel-size", args.kd_teacher_tensor_model_parallel_size),
        )
        if value is not None
    ]
    if args.kd_teacher_load is None:
        if kd_flags_given:
            raise ValueError(f"{kd_flags_given[0]} needs --kd-teacher-load")
        args.kd_iters = 0
        return
    if args.kd_iters is None:
        raise ValueError("--kd-teacher-load needs --kd-iters (n_KD, the steps with the teacher)")
    if not 0 <= args.kd_iters <= args.train_iters:
        raise ValueError(
            f"--kd-iters {args.kd_iters} must be in [0, --train-iters {args.train_iters}]"
        )
    if not 0.0 <= args.kd_alpha <= 1.0:
        raise ValueError(f"--kd-alpha {args.kd_alpha} must be in [0, 1]")
    if args.kd_temperature <= 0:
        raise ValueError("--kd-temperature must be > 0")
    if args.kd_top_k is not None and args.kd_top_k < 1:
        raise ValueError("--kd-top-k must be >= 1")
    if args.kd_teacher_tensor_model_parallel_size is None:
        args.kd_teacher_tensor_model_parallel_size = args.tensor_model_parallel_size
    from megatron_salt.parallel import validate_teacher_layout

    validate_teacher_layout(
        args.kd_teacher_tensor_model_parallel_size,
        args.kd_teacher_pipeline_model_parallel_size,
        args.tensor_model_parallel_size,
        args.pipeline_model_parallel_size,
    )
    if not os.path.exists(args.kd_teacher_load):
        raise ValueError(f"--kd-teacher-load {args.kd_teacher_load} does not exist")
    if args.kd_data_path is not None:
        _check_data_prefixes("--kd-data-path", args.kd_data_path)
    if args.kd_data_selection is not None:
        if args.kd_data_path is None:
            raise ValueError("--kd-data-selection needs --kd-data-path")
        from megatron_salt.selection.rules import Selection
        from megatron_salt.selection.sidecar import StaleScoresError, load_scores

        Selection.parse(args.kd_data_selection)
        for prefix in blend_prefixes(args.kd_data_path):
            try:
                load_scores(prefix, bin_check=args.kd_data_selection_check)
            except StaleScoresError as err:
                raise ValueError(f"--kd-data-selection: {err}") from None
            if args.kd_data_selection_by == "subset":
                from megatron_salt.selection.units import subset_ids

                subset_ids(prefix)  # MissingSubsetsError (a ValueError), one line


def _check_data_prefixes(flag: str, blend: list[str]) -> None:
    """Megatron's blend list: 'P1 P2 ...' or 'W1 P1 W2 P2 ...'; every P needs .bin and .idx."""
    if len(blend) > 1 and len(blend) % 2 == 0 and not _is_weighted(blend):
        raise ValueError(f"{flag}: expected 'PREFIX' or 'WEIGHT PREFIX [WEIGHT PREFIX ...]'")
    for prefix in blend_prefixes(blend):
        for suffix in (".bin", ".idx"):
            if not os.path.isfile(prefix + suffix):
                raise ValueError(f"{flag}: {prefix}{suffix} does not exist")


def model_config_from_args(args: argparse.Namespace, vocab_size: int) -> ModelConfig:
    return ModelConfig(
        num_layers=args.num_layers,
        hidden_size=args.hidden_size,
        ffn_hidden_size=args.ffn_hidden_size,
        num_attention_heads=args.num_attention_heads,
        num_query_groups=args.num_query_groups if args.group_query_attention else None,
        seq_length=args.seq_length,
        max_position_embeddings=args.max_position_embeddings,
        vocab_size=vocab_size,
        make_vocab_size_divisible_by=args.make_vocab_size_divisible_by,
        position_embedding_type=args.position_embedding_type,
        rotary_base=args.rotary_base,
        rotary_percent=args.rotary_percent,
        rope_scaling=args.use_rope_scaling,
        rope_scaling_factor=args.rope_scaling_factor,
        normalization=args.normalization,
        norm_epsilon=args.norm_epsilon,
        swiglu=args.swiglu,
        add_bias_linear=not args.disable_bias_linear,
        add_qkv_bias=args.add_qkv_bias,
        use_parallel_residual=args.use_parallel_residual,
        untie_embeddings_and_output_weights=args.untie_embeddings_and_output_weights,
        hidden_dropout=args.hidden_dropout,
        attention_dropout=args.attention_dropout,
        init_method_std=args.init_method_std,
    )


def kd_config_from_args(args: argparse.Namespace) -> KDConfig:
    return KDConfig(
        teacher_load=args.kd_teacher_load,
        teacher_tensor_model_parallel_size=args.kd_teacher_tensor_model_parallel_size,
        teacher_pipeline_model_parallel_size=args.kd_teacher_pipeline_model_parallel_size,
        alpha=args.kd_alpha,
        temperature=args.kd_temperature,
        top_k=args.kd_top_k,
        iters=args.kd_iters or 0,
        schedule=args.kd_schedule,
        data_path=args.kd_data_path,
        data_selection=args.kd_data_selection,
        data_selection_by=args.kd_data_selection_by,
    )


def wandb_group(args: argparse.Namespace) -> str:
    if args.wandb_group:
        return args.wandb_group
    data = "+".join(os.path.basename(p) for p in args.data_path if not _is_number(p))
    shape = f"{args.num_layers}L{args.hidden_size}H"
    return f"{shape}-{data}-s{args.seq_length}-gbs{args.global_batch_size}"


def _is_weighted(blend: list[str]) -> bool:
    return len(blend) % 2 == 0 and all(_is_number(w) for w in blend[0::2])


def blend_prefixes(blend: list[str]) -> list[str]:
    """The prefixes of a Megatron blend list ('P1 P2' or 'W1 P1 W2 P2')."""
    return list(blend[1::2]) if _is_weighted(blend) else list(blend)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
