# p2pfed — the two set-up commands are `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# torch's pinned CPU wheel is installed first so that the loose `torch>=2.3` in
# pyproject.toml is already satisfied and pip never resolves the multi-GB CUDA build.
# On these machines pip finds the 2.13.0 CPU wheel on local disk; elsewhere set TORCH_PIN
# to a requirement plus PyTorch's CPU wheel index (--index-url) to get the same effect.
TORCH_PIN ?= torch==2.13.0
OUT    ?= runs/default

.PHONY: run test lint typecheck check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet $(TORCH_PIN)
	$(BIN)/pip install --quiet -e ".[dev,he,dp]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/p2pfed run --out $(OUT) --overwrite

test: $(STAMP)
	$(BIN)/ruff check p2pfed tests scripts
	$(BIN)/ruff format --check p2pfed tests scripts
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -m "not ray and not serial" -n 2 --dist loadfile
	$(BIN)/python -m pytest -q -m "ray or serial"

lint: $(STAMP)
	$(BIN)/ruff check p2pfed tests scripts
	$(BIN)/ruff format --check p2pfed tests scripts

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
