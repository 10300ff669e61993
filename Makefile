# Two commands set everything up on a fresh machine with only Python:
#   make demo   -> builds .venv, the tiny model, and runs `generate` on data/prompts.csv into outputs/demo/
#   make test   -> builds .venv, installs Chromium for the browser tests (root + apt only; BROWSER=0 skips
#                  that), and runs the test suite in parallel and in random order
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# CPU torch by default; a GPU machine sets e.g. TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0
# BROWSER=0: neither install Chromium nor run the browser tests (they skip and say why).
BROWSER ?= 1

.PHONY: install browser demo test test-gpu test-slow lint format bench bench-ray bench-scale bench-gpu bench-lora clean

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -c requirements.lock -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/layerdiffuse generate data/prompts.csv --config configs/tiny.yaml --out outputs/demo

# The report tests drive a real headless Chromium (Debian's chromium + chromium-driver). Installed here,
# system-wide with apt-get, when missing and possible (root with apt); otherwise those tests skip and say why.
browser:
ifeq ($(BROWSER),0)
	@echo "note: BROWSER=0: Chromium not installed, the browser tests will be skipped"
else
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || \
	{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  echo "installing Debian's chromium and chromium-driver system-wide with apt-get (BROWSER=0 skips this)" && \
	  { apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; }; } \
	  || echo "note: chromium could not be installed; the browser tests will be skipped"; }
endif

# In parallel (one worker per CPU; each file on one worker, so its module fixtures are built once) and in
# random order (pytest-randomly prints the seed that repeats an order).
test: install browser
	LAYERDIFFUSE_BROWSER_TESTS=$(BROWSER) $(BIN)/pytest -n auto --dist loadfile

# Opt-in markers (left out of the default run by pyproject's addopts; a later -m replaces that one).
test-gpu: install
	$(BIN)/pytest -m gpu

test-slow: install
	$(BIN)/pytest -m slow

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Benchmarks: CPU ratios on the tiny model, PNG encoders, device-shaped throughput with a stand-in device
# (each writes its section of tests/bench/RESULTS.md); GPU runs only where CUDA is.
bench: install browser
	$(BIN)/python -m tests.bench.cpu
	$(BIN)/python -m tests.bench.png
	$(BIN)/python -m tests.bench.device
	$(BIN)/python -m tests.bench.ray_overhead

# The Ray executor's scheduling overhead against the same shards run directly, and actors against tasks
# (--cases 100000x1000 for the larger table: tens of minutes on 2 cores).
bench-ray: install
	$(BIN)/python -m tests.bench.ray_overhead

# Dataset scale: synthetic finished folders of 10k, 100k and 1M rows (about 15 minutes, a few GB of disk).
bench-scale: install
	$(BIN)/python -m tests.bench.scale

bench-gpu: install
	$(BIN)/python -m tests.bench.gpu

# LoRA switching at full SDXL UNet size: unfused adapters against fuse-and-restore (CPU: ~12 GB, ~15 minutes).
bench-lora: install
	$(BIN)/python -m tests.bench.lora_switch

clean:
	rm -rf $(VENV) models outputs/demo
