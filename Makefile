# Two commands set everything up on a fresh machine with only Python:
#   make demo   -> builds .venv, the tiny model, and runs `generate` on data/prompts.csv into outputs/demo/
#   make test   -> builds .venv and runs the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# CPU torch by default; a GPU machine sets e.g. TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0

.PHONY: install demo test test-all test-gpu lint format bench bench-gpu clean

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -c requirements.lock -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/layerdiffuse generate data/prompts.csv --config configs/tiny.yaml --out outputs/demo

test: install
	$(BIN)/pytest

test-gpu: install
	$(BIN)/pytest -m gpu

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) models outputs/demo
