# megatron-salt: the two commands a user needs.
#   make demo   corpus -> tokenizer -> indexed dataset -> teacher -> scores ->
#               baseline, SALT and SALT_DS students -> few-shot evaluation -> report
#               (CPU: ~5 min on 2 cores with bf16, within 15 min on fp32-only ones)
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

.PHONY: install test test-newest demo lint clean-demo bench gpu-wheels

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

# ~4 MB of text (~1.2M tokens): several times what a student trains on (0.33M tokens).
DEMO_MAX_DOCS ?= 80
# Each stage's wall-clock goes to the report (examples/tiny_cpu/time_stage.sh).
export STAGE_TIMES := $(abspath $(DEMO_DIR))/stage_times.tsv
TIME_STAGE := examples/tiny_cpu/time_stage.sh

$(CORPUS)/.done: $(STAMP)
	$(TIME_STAGE) corpus $(PY) tools/make_demo_corpus.py --output-dir $(CORPUS) --max-docs-per-subset $(DEMO_MAX_DOCS)
	touch $@

$(TOKENIZER): $(CORPUS)/.done
	$(TIME_STAGE) tokenizer $(PY) tools/train_tokenizer.py --input $(CORPUS) --model-prefix $(basename $(TOKENIZER)) --vocab-size 4096

$(DATA_PREFIX)_text_document.idx: $(TOKENIZER)
	$(TIME_STAGE) preprocess $(PY) tools/preprocess_pile.py --input $(CORPUS) --output-prefix $(DATA_PREFIX) \
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

# --- GPU check (benchmarks/gpu_check.py; BENCHMARKS.md, "GPU check") ---------------
# The device machine runs Python 3.12 with torch but no megatron-core and no network: the
# wheels it lacks go into the gitignored .whl/ that the device tool carries (the working
# tree and carried paths together must stay under 64 MiB). ModelOpt and its needs are
# there only for the LogitsKLLoss comparison: GPU_WHEELS=megatron-core==0.16.1 drops them.
GPU_WHEEL_DIR ?= .whl
GPU_WHEELS ?= megatron-core==0.16.1 nvidia-modelopt==0.47.0 omegaconf==2.4.0 pulp==3.3.2 \
	pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
	typing-extensions==4.16.0
GPU_CARRY_LIMIT_MIB ?= 64
GPU_PLATFORMS := manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 \
	manylinux_2_17_x86_64 manylinux2014_x86_64

gpu-wheels: $(STAMP)
	rm -rf $(GPU_WHEEL_DIR).tmp
	$(PY) -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
		--python-version 3.12 --implementation cp $(addprefix --platform ,$(GPU_PLATFORMS)) \
		-d $(GPU_WHEEL_DIR).tmp $(GPU_WHEELS)
	@tree=$$(git ls-files -co --exclude-standard -z -- . ':!$(GPU_WHEEL_DIR).tmp' \
		| xargs -0 -r stat -c %s 2>/dev/null | awk '{s += $$1} END {print s + 0}'); \
	whl=$$(cat $(GPU_WHEEL_DIR).tmp/*.whl | wc -c); total=$$((tree + whl)); \
	echo "gpu-wheels: $$(ls $(GPU_WHEEL_DIR).tmp | wc -l) wheels, $$((whl >> 20)) MiB; with" \
		"the working tree $$((total >> 20)) MiB of the $(GPU_CARRY_LIMIT_MIB) MiB a device call carries"; \
	if [ $$total -gt $$(($(GPU_CARRY_LIMIT_MIB) << 20)) ]; then \
		rm -rf $(GPU_WHEEL_DIR).tmp; \
		echo "gpu-wheels: over $(GPU_CARRY_LIMIT_MIB) MiB; set GPU_WHEELS=megatron-core==0.16.1"; \
		exit 1; fi
	rm -rf $(GPU_WHEEL_DIR) && mv $(GPU_WHEEL_DIR).tmp $(GPU_WHEEL_DIR)
	@echo "gpu-wheels: $(GPU_WHEEL_DIR)/ ready (gitignored: $$(git check-ignore -q $(GPU_WHEEL_DIR)/x && echo yes || echo NO))"
