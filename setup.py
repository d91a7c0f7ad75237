"""megatron-salt: SALT (small-LM-assisted LLM pretraining) on Megatron-Core."""

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent

setup(
    name="megatron-salt",
    version="0.1.0",
    description=(
        "SALT on Megatron-Core: knowledge distillation from a small LM early in "
        "pretraining, and small-LM data selection"
    ),
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["megatron_salt", "megatron_salt.*"]),
    install_requires=[
        # Tested: 0.16.1 (newest for Python 3.11) and 0.19.2 (Python 3.12); see
        # megatron_salt/compat/versions.py and `make test-newest`.
        "megatron-core>=0.16.1,<0.20",
        "packaging",
        "torch>=2.6",
        "numpy",
        "sentencepiece",
        "wandb",
        "zstandard",
        "tqdm",
        # megatron-core's dist_checkpointing needs psutil for its writers.
        "psutil",
    ],
    extras_require={
        "te": ["transformer-engine[pytorch]"],
        # HuggingFace tokenizers, and checkpoints in and out (tools/convert_checkpoint.py).
        "hf": ["tokenizers", "transformers>=5", "safetensors"],
        "plot": ["matplotlib"],
        # Few-shot evaluation (tools/evaluate.py): lm-evaluation-harness and its HF backend
        # (accelerate, peft), on the HF export of a checkpoint.
        "eval": ["lm-eval[hf]>=0.4.13,<0.5", "tokenizers", "transformers>=5", "safetensors"],
        "dev": [
            "pytest",
            "ruff",
            "tokenizers",
            "transformers>=5",
            "safetensors",
            "matplotlib",
            "lm-eval[hf]>=0.4.13,<0.5",
        ],
    },
    # The scripts in tools/ and pretrain_salt.py, installed as commands as well.
    entry_points={
        "console_scripts": [
            "salt-pretrain=megatron_salt.training.loop:main",
            "salt-preprocess-pile=megatron_salt.selection.preprocess_cli:main",
            "salt-score-data=megatron_salt.selection.cli:score_main",
            "salt-select-data=megatron_salt.selection.cli:select_main",
            "salt-convert-checkpoint=megatron_salt.convert.cli:main",
        ],
    },
)
