"""Tokenizers shared by the preprocessing tool and the training loop.

One small interface over two libraries, so that the ids written into a ``.bin`` file and the
ids the training loop reasons about (vocabulary size, end-of-document id) come from the same
object:

* ``SentencePieceTokenizer`` / ``GPTSentencePieceTokenizer``: a sentencepiece ``.model`` file.
  Both names are accepted because Megatron-LM users pass either. In both, EOD is the model's own
  ``eos_id`` (Megatron-LM's ``SentencePieceTokenizer`` instead appends new ``<EOD>``-style ids
  past the vocabulary; we do not, so the vocabulary size is exactly the model's).
* ``HuggingFaceTokenizer``: a local ``tokenizer.json`` (or a directory holding one), read with
  the ``tokenizers`` package, which is imported only when this type is asked for. EOD is the
  ``eos_token`` named in a ``tokenizer_config.json`` next to ``tokenizer.json`` if there is one,
  otherwise the first of ``</s>``, ``<|endoftext|>``, ``<|end_of_text|>``, ``<eos>``, ``<|eos|>``
  found in the vocabulary. Special tokens are never added by ``encode*``: EOD placement is
  the caller's decision (``--append-eod``).

``encode_batch`` is the fast path: it hands a whole list of texts to the library's native batch
API, which loops in C++/Rust instead of Python.
"""

from __future__ import annotations

import itertools
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

TOKENIZER_TYPES = ("SentencePieceTokenizer", "GPTSentencePieceTokenizer", "HuggingFaceTokenizer")

# Tried in order when a Hugging Face tokenizer has no tokenizer_config.json naming its EOS.
HF_EOS_CANDIDATES = ("</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>", "<|eos|>")
HF_PAD_CANDIDATES = ("<pad>", "[PAD]", "<|pad|>")


class TokenizerError(ValueError):
    """The tokenizer cannot be built; the message names the flag to fix."""


class Tokenizer(ABC):
    """What the data pipeline and the training loop need from a tokenizer."""

    #: Number of ids the tokenizer can produce, before any Megatron padding of the vocabulary.
    vocab_size: int
    #: End-of-document id, appended after each document by ``--append-eod``.
    eod: int

    @abstractmethod
    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, in order (no BOS/EOS added)."""

    def encode(self, text: str) -> list[int]:
        """Token ids of one text (no BOS/EOS added)."""
        return self.encode_batch([text])[0]

    def encode_batch_flat(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``encode_batch`` as two arrays: all ids concatenated, and each text's length.

        The preprocessing workers' path: it skips building a Python int per token where the
        library can hand out arrays directly.
        """
        token_lists = self.encode_batch(texts)
        lengths = np.fromiter(map(len, token_lists), np.int64, len(token_lists))
        flat = np.fromiter(itertools.chain.from_iterable(token_lists), np.int64, int(lengths.sum()))
        return flat, lengths

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Text of a sequence of ids."""

    def describe(self) -> dict:
        """JSON-able identity of the tokenizer, recorded in preprocessing summaries."""
        return {"type": type(self).__name__, "vocab_size": self.vocab_size, "eod": self.eod}

    # What Megatron-Core's GPTDataset reads from ``GPTDatasetConfig.tokenizer``, so one of
    # these can be passed there directly.

    #: Padding id, or -1 (Megatron-Core's "no pad") when the vocabulary has none. GPTDataset
    #: masks labels equal to it out of the loss.
    pad: int = -1

    @property
    def eos(self) -> int:
        return self.eod

    @property
    def unique_identifiers(self) -> dict:
        """Part of the key of Megatron-Core's dataset index cache (``path_to_cache``)."""
        return {"class": f"{type(self).__module__}.{type(self).__qualname__}", **self.describe()}


class SentencePieceTokenizer(Tokenizer):
    """A sentencepiece model; EOD is the model's ``eos_id``.

    Args:
        model_file: path to the ``.model`` file.
        num_threads: threads sentencepiece may use inside one ``encode_batch`` call. The
            preprocessing tool parallelises with processes and keeps this at 1.
        tokenizer_type: the name it was built under (recorded in summaries).
    """

    def __init__(
        self,
        model_file: str,
        num_threads: int = 1,
        tokenizer_type: str = "SentencePieceTokenizer",
    ) -> None:
        import sentencepiece

        self.model_file = model_file
        self.tokenizer_type = tokenizer_type
        self.num_threads = num_threads
        try:
            self._sp = sentencepiece.SentencePieceProcessor(model_file=model_file)
        except (OSError, RuntimeError) as err:
            raise TokenizerError(
                f"--tokenizer-model: cannot load sentencepiece model {model_file!r} ({err})"
            ) from err
        self.vocab_size = self._sp.get_piece_size()
        self.eod = self._sp.eos_id()
        if self.eod < 0:
            raise TokenizerError(
                f"--tokenizer-model: sentencepiece model {model_file!r} has no EOS piece "
                "(trained with eos_id=-1); EOD needs one"
            )
        # sentencepiece >= 0.2.1 can return numpy arrays, skipping a Python int per token.
        self._numpy_output = _sentencepiece_has_numpy_output()
        self.bos = self._sp.bos_id()
        self.pad = self._sp.pad_id()  # -1 when the model has none
        self.unk = self._sp.unk_id()

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        return self._sp.encode(list(texts), out_type=int, num_threads=self.num_threads)

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text, out_type=int)

    def encode_batch_flat(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        if not self._numpy_output:
            return super().encode_batch_flat(texts)
        if not texts:
            return np.zeros(0, np.int32), np.zeros(0, np.int64)
        arrays = self._sp.encode(list(texts), out_type="numpy", num_threads=self.num_threads)
        lengths = np.fromiter(map(len, arrays), np.int64, len(arrays))
        return np.concatenate(arrays), lengths

    def decode(self, ids: Sequence[int]) -> str:
        return self._sp.decode([int(i) for i in ids])

    def describe(self) -> dict:
        return {
            "type": self.tokenizer_type,
            "model": self.model_file,
            "vocab_size": self.vocab_size,
            "eod": self.eod,
        }


def _sentencepiece_has_numpy_output() -> bool:
    import sentencepiece

    dispatch = getattr(sentencepiece, "_ENCODE_DISPATCH", None)
    return isinstance(dispatch, dict) and "numpy" in dispatch.get(True, {})


class HuggingFaceTokenizer(Tokenizer):
    """A local ``tokenizers`` model (``tokenizer.json``), without ``transformers``.

    Args:
        path: a ``tokenizer.json`` file, or a directory containing one.
    """

    def __init__(self, path: str) -> None:
        try:
            import tokenizers
        except ImportError as err:
            raise TokenizerError(
                "--tokenizer-type HuggingFaceTokenizer needs the 'tokenizers' package: "
                "pip install 'megatron-salt[hf]' (or pip install tokenizers)"
            ) from err

        json_path = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
        if not os.path.isfile(json_path):
            raise TokenizerError(f"--tokenizer-model: no tokenizer.json at {path!r}")
        try:
            self._tok = tokenizers.Tokenizer.from_file(json_path)
        except Exception as err:  # the Rust side raises a plain Exception
            raise TokenizerError(
                f"--tokenizer-model: cannot load {json_path!r} as a tokenizers model ({err})"
            ) from err
        self.model_file = json_path
        self.tokenizer_type = "HuggingFaceTokenizer"
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.eos_token = self._find_eos_token(json_path)
        self.eod = self._tok.token_to_id(self.eos_token)
        pad = next(
            (
                self._tok.token_to_id(t)
                for t in HF_PAD_CANDIDATES
                if self._tok.token_to_id(t) is not None
            ),
            None,
        )
        self.pad = -1 if pad is None else pad
        # encode_batch_fast (tokenizers >= 0.20) skips computing character offsets.
        self._encode_batch = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)

    def _find_eos_token(self, json_path: str) -> str:
        config_path = os.path.join(os.path.dirname(json_path), "tokenizer_config.json")
        if os.path.isfile(config_path):
            with open(config_path, encoding="utf-8") as f:
                eos = json.load(f).get("eos_token")
            if isinstance(eos, dict):  # transformers' AddedToken serialisation
                eos = eos.get("content")
            if eos is not None:
                if self._tok.token_to_id(eos) is None:
                    raise TokenizerError(
                        f"--tokenizer-model: eos_token {eos!r} from {config_path!r} is not in "
                        f"the vocabulary of {json_path!r}"
                    )
                return eos
        for candidate in HF_EOS_CANDIDATES:
            if self._tok.token_to_id(candidate) is not None:
                return candidate
        raise TokenizerError(
            f"--tokenizer-model: {json_path!r} has none of the EOS tokens "
            f'{", ".join(HF_EOS_CANDIDATES)}; name yours as "eos_token" in a '
            "tokenizer_config.json next to tokenizer.json"
        )

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        encodings = self._encode_batch(list(texts), add_special_tokens=False)
        return [encoding.ids for encoding in encodings]

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def describe(self) -> dict:
        return {
            "type": self.tokenizer_type,
            "model": self.model_file,
            "vocab_size": self.vocab_size,
            "eod": self.eod,
            "eos_token": self.eos_token,
        }


def build_tokenizer(tokenizer_type: str, tokenizer_model: str) -> Tokenizer:
    """The tokenizer named by ``--tokenizer-type`` / ``--tokenizer-model``.

    Raises:
        TokenizerError: unknown type, missing or unreadable model file.
    """
    if tokenizer_type not in TOKENIZER_TYPES:
        raise TokenizerError(
            f"--tokenizer-type: unknown tokenizer type {tokenizer_type!r} "
            f"(choose from {', '.join(TOKENIZER_TYPES)})"
        )
    if not tokenizer_model:
        raise TokenizerError(f"--tokenizer-model is required for {tokenizer_type}")
    if not os.path.exists(tokenizer_model):
        raise TokenizerError(f"--tokenizer-model: no such file or directory: {tokenizer_model!r}")
    if tokenizer_type == "HuggingFaceTokenizer":
        return HuggingFaceTokenizer(tokenizer_model)
    if os.path.isdir(tokenizer_model):
        raise TokenizerError(
            f"--tokenizer-model: {tokenizer_model!r} is a directory; {tokenizer_type} needs a "
            "sentencepiece .model file"
        )
    return SentencePieceTokenizer(tokenizer_model, tokenizer_type=tokenizer_type)
