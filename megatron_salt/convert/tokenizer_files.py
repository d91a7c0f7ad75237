"""The tokenizer that travels with a checkpoint.

An imported checkpoint keeps the HuggingFace tokenizer files it came with in
``iter_N/tokenizer/``; a ``pretrain_salt.py`` checkpoint names its tokenizer in
``run_args.json``. :func:`checkpoint_tokenizer` finds either, so scoring, the
teacher's tokenizer check and ``export-hf`` need no extra flag.

Exporting a sentencepiece tokenizer writes a ``tokenizer.json`` built from the
sentencepiece model's own settings (transformers' ``SpmConverter``), which encodes
text to the same ids as :class:`~megatron_salt.tokenizer.SentencePieceTokenizer`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from megatron_salt.convert.errors import ConversionError
from megatron_salt.tokenizer import SentencePieceTokenizer, build_tokenizer

TOKENIZER_DIR = "tokenizer"
RUN_ARGS_FILE = "run_args.json"
HF_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
)


def copy_hf_tokenizer(src_dir: Path, dst_dir: Path) -> list[str]:
    """Copy whichever tokenizer files ``src_dir`` has; return their names."""
    copied = []
    for name in HF_TOKENIZER_FILES:
        if (src_dir / name).is_file():
            dst_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src_dir / name, dst_dir / name)
            copied.append(name)
    return copied


def hf_tokenizer_vocab_size(directory: Path) -> int | None:
    """Ids the tokenizer in a HF model directory produces (added tokens included)."""
    if (directory / "tokenizer.json").is_file():
        import tokenizers

        tok = tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json"))
        return tok.get_vocab_size(with_added_tokens=True)
    if (directory / "tokenizer.model").is_file():
        return SentencePieceTokenizer(str(directory / "tokenizer.model")).vocab_size
    return None


def checkpoint_tokenizer(ckpt_dir: Path) -> tuple[str, str] | None:
    """``(tokenizer_type, tokenizer_model)`` of a checkpoint directory, if it names one."""
    local = ckpt_dir / TOKENIZER_DIR
    if (local / "tokenizer.json").is_file():
        return "HuggingFaceTokenizer", str(local)
    if (local / "tokenizer.model").is_file():
        return "SentencePieceTokenizer", str(local / "tokenizer.model")
    run_args = ckpt_dir / RUN_ARGS_FILE
    if run_args.is_file():
        args = json.loads(run_args.read_text())
        kind, model = args.get("tokenizer_type"), args.get("tokenizer_model")
        if kind and model and Path(model).exists():
            return kind, model
    return None


def write_hf_tokenizer(tokenizer_type: str, tokenizer_model: str, out_dir: Path) -> None:
    """Write files ``AutoTokenizer.from_pretrained(out_dir)`` loads with the same ids as ours."""
    ours = build_tokenizer(tokenizer_type, tokenizer_model)
    if tokenizer_type == "HuggingFaceTokenizer":
        src = Path(ours.model_file).parent
        copy_hf_tokenizer(src, out_dir)
        if not (out_dir / "tokenizer_config.json").is_file():
            _fast_tokenizer_from_file(ours.model_file, ours).save_pretrained(str(out_dir))
        return
    _sentencepiece_to_hf(ours, out_dir)
    shutil.copyfile(tokenizer_model, out_dir / "tokenizer.model")


def _fast_tokenizer_from_file(json_path: str, ours):
    import tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = tokenizers.Tokenizer.from_file(json_path)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=ours.eos_token)


def _sentencepiece_to_hf(ours: SentencePieceTokenizer, out_dir: Path) -> None:
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import SpmConverter, import_protobuf

    proto = import_protobuf().ModelProto()
    proto.ParseFromString(Path(ours.model_file).read_bytes())
    model_type = proto.trainer_spec.model_type  # 1 unigram, 2 bpe
    if model_type == 1:
        vocab = [(piece.piece, piece.score) for piece in proto.pieces]
    elif model_type == 2:
        vocab = {piece.piece: i for i, piece in enumerate(proto.pieces)}
    else:
        raise ConversionError(
            f"{ours.model_file}: sentencepiece model_type {model_type} "
            "(only unigram and BPE models export)"
        )
    backend = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab)
    sp = ours._sp
    specials = {
        "unk_token": sp.id_to_piece(sp.unk_id()) if sp.unk_id() >= 0 else None,
        "bos_token": sp.id_to_piece(sp.bos_id()) if sp.bos_id() >= 0 else None,
        "eos_token": sp.id_to_piece(sp.eos_id()),
        "pad_token": sp.id_to_piece(sp.pad_id()) if sp.pad_id() >= 0 else None,
    }
    fast = PreTrainedTokenizerFast(
        tokenizer_object=backend, **{k: v for k, v in specials.items() if v is not None}
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))
