"""megatron-salt: SALT (small-LM-assisted LLM training) on Megatron-Core."""

__version__ = "0.1.0"
