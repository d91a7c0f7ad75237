# megatron-salt: the two commands a user needs.
#   make demo   corpus -> tokenizer -> indexed dataset -> teacher -> scores ->
#               baseline, SALT and SALT_DS students -> few-shot evaluation -> report
#               (CPU, ~15 min on 2 cores)
#   make test   the test suite
# Both create .venv and install what they need. On machines without a GPU,
# torch is pinned to the local CPU wheel so pip never pulls CUDA packages.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed-stamp

DEMO_DIR ?= demo_out
WORKERS ?= 2

.PHONY: install test demo lint clean-demo bench

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

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
	@echo "plots: $(DEMO_DIR)/report/salt_vs_baseline.png $(DEMO_DIR)/report/salt_vs_baseline_fewshot.png"

clean-demo:
	rm -rf $(DEMO_DIR)

# Benchmarks (minutes to tens of minutes on 2 cores; results go to BENCHMARKS.md).
bench: $(DATA_PREFIX)_text_document.idx
	$(PY) benchmarks/preprocess.py
	$(PY) benchmarks/kd_loss.py
	$(PY) benchmarks/kd_step.py --data-prefix $(DATA_PREFIX)_text_document --tokenizer-model $(TOKENIZER)
