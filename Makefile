# megatron-salt: the two commands a user needs.
#   make demo   corpus -> tokenizer -> indexed dataset -> teacher -> scores ->
#               baseline, SALT and SALT_DS students -> report (CPU, ~15 min on 2 cores)
#   make test   the test suite (Python 3.11, megatron-core 0.16.1: what pip resolves there)
#   make test-newest  the same suite on Python 3.12 and the newest megatron-core 0.19.x,
#               plus checkpoints and losses across the two versions
# Each creates its venv and installs what it needs. On machines without a GPU,
# torch is pinned to the local CPU wheel so pip never pulls CUDA packages (on
# Python 3.12 there is no local wheel: the same release comes from the index).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed-stamp
# A second interpreter whose venv has another megatron-core (tests/test_megatron_versions.py).
OTHER_PYTHON ?=

# Python 3.12 (pyenv's newest 3.12, else one on PATH) with the newest megatron-core setup.py admits.
PYTHON_NEWEST ?= $(or $(lastword $(sort $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12))),$(shell command -v python3.12))
VENV_NEWEST ?= .venv-newest

DEMO_DIR ?= demo_out
WORKERS ?= 2

.PHONY: install test test-newest demo lint clean-demo bench

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	SALT_OTHER_PYTHON=$(OTHER_PYTHON) $(PY) -m pytest -q tests

test-newest: $(STAMP)
	@test -n "$(PYTHON_NEWEST)" || { echo "test-newest: no python3.12 found (set PYTHON_NEWEST)"; exit 2; }
	$(MAKE) test PYTHON=$(PYTHON_NEWEST) VENV=$(VENV_NEWEST) OTHER_PYTHON=$(abspath $(PY))

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# --- demo ---------------------------------------------------------------------

CORPUS := $(DEMO_DIR)/corpus
TOKENIZER := $(DEMO_DIR)/tokenizer/spm.model
DATA_PREFIX := $(DEMO_DIR)/data/demo

# ~7 MB of text (~2.2M tokens): several times what the demo trains on, scored in ~2.5 min.
DEMO_MAX_DOCS ?= 160

$(CORPUS)/.done: $(STAMP)
	$(PY) tools/make_demo_corpus.py --output-dir $(CORPUS) --max-docs-per-subset $(DEMO_MAX_DOCS)
	touch $@

$(TOKENIZER): $(CORPUS)/.done
	$(PY) tools/train_tokenizer.py --input $(CORPUS) --model-prefix $(basename $(TOKENIZER)) --vocab-size 4096

$(DATA_PREFIX)_text_document.idx: $(TOKENIZER)
	$(PY) tools/preprocess_pile.py --input $(CORPUS) --output-prefix $(DATA_PREFIX) \
		--tokenizer-type SentencePieceTokenizer --tokenizer-model $(TOKENIZER) \
		--append-eod --workers $(WORKERS)

# The training half: examples/tiny_cpu/run.sh (each finished step is skipped on a rerun).
demo: $(DATA_PREFIX)_text_document.idx
	PY=$(abspath $(PY)) DEMO_DIR=$(DEMO_DIR) examples/tiny_cpu/run.sh all
	@echo
	@cat $(DEMO_DIR)/report/salt_vs_baseline.md
	@echo "plot: $(DEMO_DIR)/report/salt_vs_baseline.png"

clean-demo:
	rm -rf $(DEMO_DIR)

# Benchmarks (minutes to tens of minutes on 2 cores; results go to BENCHMARKS.md).
bench: $(DATA_PREFIX)_text_document.idx
	$(PY) benchmarks/preprocess.py
	$(PY) benchmarks/kd_loss.py
	$(PY) benchmarks/kd_step.py --data-prefix $(DATA_PREFIX)_text_document --tokenizer-model $(TOKENIZER)
