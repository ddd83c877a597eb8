# nnkube developer entry points. `make demo` and `make test` each set everything up from a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch; on machines that keep it on disk, pip takes it from there. Override for CUDA.
TORCH_SPEC ?= torch==2.13.0
DATASET ?= ../shared/datasets/Task04_Hippocampus
WORKDIR ?= demo_work
PYTEST_ARGS ?=

.PHONY: install demo test lint clean

$(BIN)/.nnkube-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e '.[runtime,dev]'
	touch $@

install: $(BIN)/.nnkube-installed

demo: install
	$(BIN)/nnkube demo --dataset "$(DATASET)" --workdir "$(WORKDIR)"

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check stages workflows sdk tests benchmarks

clean:
	rm -rf $(VENV) $(WORKDIR) .pytest_cache .ruff_cache
