"""HuggingFace checkpoints <-> Megatron-Core ``dist_checkpointing`` checkpoints.

``import_hf`` builds the model once (TP=1, PP=1, uninitialised), fills each parameter
from the HF tensors it is made of, read one at a time from safetensors (``safe_open``)
or a memory-mapped ``.bin``, and saves it in ``pretrain_salt.py``'s layout: peak memory
is one copy of the model plus one layer's tensors. ``dist_checkpointing`` then reshards
to whatever TP/PP a run loads it at (``--kd-teacher-load``, ``--load --finetune``,
``score_data.py --load``).

``export_hf`` loads a checkpoint at TP=1, PP=1 and writes each HF tensor in turn into
safetensors shards of at most ``max_shard_bytes``, with the ``config.json`` of the
transformers class that computes the same function and the tokenizer files.

Both run in one process (a one-rank gloo group is created when none exists).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch

from megatron_salt.checkpoint_dir import TRACKER_FILE, TrainState, iteration_dir, write_manifest
from megatron_salt.compat.versions import write_legacy_common_state
from megatron_salt.config import ModelConfig, ParallelConfig, PrecisionConfig
from megatron_salt.convert.errors import ConversionError
from megatron_salt.convert.hf_config import (
    HFModel,
    hf_architecture_for,
    hf_config_kwargs,
    model_config_from_hf,
)
from megatron_salt.convert.hf_weights import HF_ALIASES, IGNORED_HF_SUFFIXES, tensor_maps
from megatron_salt.convert.tokenizer_files import (
    TOKENIZER_DIR,
    checkpoint_tokenizer,
    copy_hf_tokenizer,
    hf_tokenizer_vocab_size,
    write_hf_tokenizer,
)

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
DEFAULT_MAX_SHARD_BYTES = 5 * 2**30


# --- reading HF tensors --------------------------------------------------------------


class HFTensorReader:
    """Tensors of a HF model directory by name, loaded one at a time."""

    def __init__(self, hf_dir: Path, stack: ExitStack) -> None:
        self.hf_dir = hf_dir
        self._where: dict[str, object] = {}
        index = hf_dir / "model.safetensors.index.json"
        single = hf_dir / "model.safetensors"
        bin_index = hf_dir / "pytorch_model.bin.index.json"
        bin_single = hf_dir / "pytorch_model.bin"
        if index.is_file() or single.is_file():
            from safetensors import safe_open

            files = (
                sorted(set(json.loads(index.read_text())["weight_map"].values()))
                if index.is_file()
                else [single.name]
            )
            for name in files:
                handle = stack.enter_context(safe_open(str(hf_dir / name), framework="pt"))
                for key in handle.keys():
                    self._where[key] = handle
        elif bin_index.is_file() or bin_single.is_file():
            files = (
                sorted(set(json.loads(bin_index.read_text())["weight_map"].values()))
                if bin_index.is_file()
                else [bin_single.name]
            )
            for name in files:
                # mmap: tensors are paged in when used, not read whole.
                state = torch.load(hf_dir / name, map_location="cpu", mmap=True, weights_only=True)
                self._where.update(dict.fromkeys(state, state))
        else:
            raise ConversionError(
                f"{hf_dir}: no model.safetensors(.index.json) or pytorch_model.bin"
            )

    def keys(self) -> set[str]:
        return set(self._where)

    def resolve(self, name: str) -> str:
        """``name``, or the alias this checkpoint stores it under."""
        alias = HF_ALIASES.get(name)
        return alias if name not in self._where and alias in self._where else name

    def get(self, name: str) -> torch.Tensor:
        name = self.resolve(name)
        source = self._where.get(name)
        if source is None:
            raise ConversionError(f"{self.hf_dir}: tensor {name!r} is missing")
        if isinstance(source, dict):
            return source[name]
        return source.get_tensor(name)


# --- process group for one-process conversions -------------------------------------------


@contextmanager
def single_process_megatron() -> Iterator[None]:
    """A one-rank gloo group and Megatron TP=PP=1, unless the caller set them up."""
    import torch.distributed as dist
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    from megatron_salt.parallel import initialize_distributed

    own_group = not dist.is_initialized()
    initialize_distributed("gloo", alone=True)
    own_parallel = not parallel_state.model_parallel_is_initialized()
    if own_parallel:
        parallel_state.initialize_model_parallel(1, 1)
        model_parallel_cuda_manual_seed(0)
    try:
        yield
    finally:
        if own_parallel:
            parallel_state.destroy_model_parallel()
        if own_group:
            dist.destroy_process_group()


def _build_unsharded(model_cfg: ModelConfig, dtype: torch.dtype):
    from megatron_salt.model import build_gpt_model, transformer_config

    config = transformer_config(
        model_cfg, ParallelConfig(1, 1), PrecisionConfig(bf16=dtype == torch.bfloat16)
    )
    config.perform_initialization = False
    config.use_cpu_initialization = True
    return build_gpt_model(model_cfg, config, pre_process=True, post_process=True, use_te=False)


# --- import ------------------------------------------------------------------------------


def read_hf_model(hf_dir: Path, max_seq_length: int | None = None) -> HFModel:
    config_path = hf_dir / "config.json"
    if not config_path.is_file():
        raise ConversionError(f"{hf_dir}: no config.json")
    try:
        cfg = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise ConversionError(f"{config_path}: not JSON ({err})") from None
    try:
        tokenizer_vocab = hf_tokenizer_vocab_size(hf_dir)
    except Exception as err:  # noqa: BLE001 - tokenizers raises plain Exceptions
        raise ConversionError(f"{hf_dir}: cannot read the tokenizer ({err})") from None
    try:
        return model_config_from_hf(
            cfg,
            source=str(config_path),
            tokenizer_vocab_size=tokenizer_vocab,
            max_seq_length=max_seq_length,
        )
    except KeyError as err:
        raise ConversionError(f"{config_path}: no {err.args[0]!r} field") from None
    except (TypeError, ValueError) as err:
        if isinstance(err, ConversionError):
            raise
        raise ConversionError(f"{config_path}: {err}") from None


def _fresh_output(path: Path) -> Path:
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ConversionError(f"{path} exists and is not empty")
    partial = path.with_name(path.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    return partial


def _publish(partial: Path, final: Path) -> None:
    if final.exists():
        final.rmdir()  # checked empty by _fresh_output
    os.replace(partial, final)


def import_hf(
    hf_dir: str | Path,
    save_dir: str | Path,
    *,
    dtype: str = "fp32",
    max_seq_length: int | None = None,
) -> ModelConfig:
    """Convert a HF model directory into a checkpoint root ``save_dir`` (iteration 0)."""
    from megatron.core import dist_checkpointing

    hf_dir, save_dir = Path(hf_dir), Path(save_dir)
    hf = read_hf_model(hf_dir, max_seq_length)
    partial = _fresh_output(save_dir)
    try:
        with ExitStack() as stack, single_process_megatron():
            reader = HFTensorReader(hf_dir, stack)
            model = _build_unsharded(hf.model_cfg, DTYPES[dtype])
            params = dict(model.named_parameters())
            maps = tensor_maps(hf.architecture, hf.model_cfg)
            used: set[str] = set()
            with torch.no_grad():
                for m in maps:
                    target = params.pop(m.megatron, None)
                    if target is None:
                        raise ConversionError(f"internal: no parameter {m.megatron}")
                    value = m.merge([reader.get(name) for name in m.hf])
                    if tuple(value.shape) != tuple(target.shape):
                        raise ConversionError(
                            f"{hf_dir}: {', '.join(m.hf)} give shape {tuple(value.shape)}, "
                            f"{m.megatron} needs {tuple(target.shape)}"
                        )
                    target.copy_(value)
                    used.update(reader.resolve(name) for name in m.hf)
            if params:
                raise ConversionError(f"internal: parameters not converted: {sorted(params)}")
            unused = sorted(k for k in reader.keys() - used if not k.endswith(IGNORED_HF_SUFFIXES))
            tied_head = {"lm_head.weight", "embed_out.weight"}
            if unused and not (
                set(unused) <= tied_head and not hf.model_cfg.untie_embeddings_and_output_weights
            ):
                raise ConversionError(f"{hf_dir}: tensors with no place in the model: {unused[:5]}")
            ckpt = iteration_dir(partial, 0)
            ckpt.mkdir()
            state = {
                "model": model.sharded_state_dict(),
                "train_state": TrainState().to_dict(
                    layout=None,
                    weights_only=True,
                    imported_from=f"huggingface:{hf.architecture}",
                ),
            }
            dist_checkpointing.save(state, str(ckpt))
            write_legacy_common_state(ckpt)
            del model, state
        hf.model_cfg.save(ckpt)
        copy_hf_tokenizer(hf_dir, ckpt / TOKENIZER_DIR)
        write_manifest(ckpt, 0)  # the last file of the checkpoint
        (partial / TRACKER_FILE).write_text("0\n")
        _publish(partial, save_dir)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return hf.model_cfg


# --- export ------------------------------------------------------------------------------


class ShardedSafetensorsWriter:
    """HF's sharded layout: ``model-0000k-of-0000n.safetensors`` + index, or one file."""

    def __init__(self, out_dir: Path, max_shard_bytes: int) -> None:
        self.out_dir = out_dir
        self.max_shard_bytes = max_shard_bytes
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._shards: list[list[str]] = []
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self._pending and self._pending_bytes + size > self.max_shard_bytes:
            self._flush()
        self._pending[name] = tensor.contiguous()
        self._pending_bytes += size
        self.total_bytes += size

    def _flush(self) -> None:
        from safetensors.torch import save_file

        index = len(self._shards)
        save_file(
            self._pending, str(self.out_dir / f"shard-{index}.tmp"), metadata={"format": "pt"}
        )
        self._shards.append(list(self._pending))
        self._pending, self._pending_bytes = {}, 0

    def close(self) -> None:
        if self._pending or not self._shards:
            self._flush()
        n = len(self._shards)
        if n == 1:
            os.replace(self.out_dir / "shard-0.tmp", self.out_dir / "model.safetensors")
            return
        weight_map = {}
        for i, names in enumerate(self._shards):
            final = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            os.replace(self.out_dir / f"shard-{i}.tmp", self.out_dir / final)
            weight_map.update(dict.fromkeys(names, final))
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
        (self.out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def export_hf(
    load_dir: str | Path,
    hf_dir: str | Path,
    *,
    iteration: int | None = None,
    dtype: str = "fp32",
    tokenizer: tuple[str, str] | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> str:
    """Write ``hf_dir`` from a checkpoint; return the transformers architecture name."""
    from megatron_salt.checkpoint_dir import load_model_config, open_checkpoint
    from megatron_salt.teacher import load_frozen_gpt

    load_dir, hf_dir = Path(load_dir), Path(hf_dir)
    ckpt = open_checkpoint(load_dir, iteration=iteration, log=logger.warning).path
    model_cfg = load_model_config(ckpt)
    architecture = hf_architecture_for(model_cfg)
    tokenizer = tokenizer or checkpoint_tokenizer(ckpt)
    padded = model_cfg.padded_vocab_size(1)
    partial = _fresh_output(hf_dir)
    try:
        with single_process_megatron():
            model = load_frozen_gpt(
                ckpt,
                model_cfg,
                ParallelConfig(1, 1),
                PrecisionConfig(bf16=dtype == "bf16"),
                use_te=False,
            )
            params = dict(model.named_parameters())
            writer = ShardedSafetensorsWriter(partial, max_shard_bytes)
            for m in tensor_maps(architecture, model_cfg):
                value = params.pop(m.megatron).detach().to(DTYPES[dtype])
                # No copies: a pending shard holds the parameters themselves (the model
                # is not changed while they wait) and the q/k/v, gate/up pieces.
                for name, tensor in zip(m.hf, m.split(value), strict=True):
                    writer.add(name, tensor)
            writer.close()
            del model, params
        _write_hf_config(model_cfg, architecture, padded, dtype, tokenizer, partial)
        if tokenizer is not None:
            local = ckpt / TOKENIZER_DIR
            imported = Path(tokenizer[1]) in (local, local / "tokenizer.model")
            # An imported checkpoint hands back the files it came with, unchanged.
            if not (imported and copy_hf_tokenizer(local, partial)):
                write_hf_tokenizer(tokenizer[0], tokenizer[1], partial)
        else:
            logger.warning("%s names no tokenizer: exported the model without one", ckpt)
        _publish(partial, hf_dir)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return architecture


def _write_hf_config(
    model_cfg: ModelConfig,
    architecture: str,
    padded: int,
    dtype: str,
    tokenizer: tuple[str, str] | None,
    out_dir: Path,
) -> None:
    import transformers

    kwargs = hf_config_kwargs(model_cfg, architecture, padded)
    if tokenizer is not None:
        from megatron_salt.tokenizer import build_tokenizer

        ours = build_tokenizer(*tokenizer)
        kwargs.update(eos_token_id=ours.eod, bos_token_id=getattr(ours, "bos", None))
        if ours.pad >= 0:
            kwargs["pad_token_id"] = ours.pad
    config_class = {
        "LlamaForCausalLM": transformers.LlamaConfig,
        "Qwen2ForCausalLM": transformers.Qwen2Config,
        "GPTNeoXForCausalLM": transformers.GPTNeoXConfig,
    }[architecture]
    config = config_class(**kwargs)
    config.torch_dtype = DTYPES[dtype]
    config.save_pretrained(str(out_dir))
