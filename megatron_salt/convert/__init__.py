"""Checkpoints in and out: HuggingFace <-> Megatron-Core dist_checkpointing, Megatron-LM in.

* :mod:`.hf_config`: a HuggingFace ``config.json`` <-> :class:`~megatron_salt.config.ModelConfig`
  (Llama, Mistral, Qwen2, GPT-NeoX/Pythia; anything else refused naming the field).
* :mod:`.hf_weights`: per-architecture tensor name maps and the q/k/v and gate/up layouts.
* :mod:`.hf`: ``import_hf`` / ``export_hf``, streaming one tensor at a time.
* :mod:`.tokenizer_files`: the tokenizer that travels with a checkpoint.
* :mod:`.megatron_lm`: the arguments a Megatron-LM ``torch_dist`` checkpoint stores -> ModelConfig.
"""

from megatron_salt.convert.errors import ConversionError

__all__ = ["ConversionError"]
