# One-command set-up: `make demo` and `make test` install everything they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
DEMO ?= demo-out

.PHONY: install test test-fast demo bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch first and pinned: an unpinned torch pulled in by a dependency would be a multi-GB CUDA build.
# A GPU user who already has torch in the venv keeps it (pip sees the requirement satisfied).
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

# aot train against TRL's DPOTrainer(loss_type="aot"), side by side (docs/performance.md); about 20 min for
# the small config on 2 CPU cores, a minute for BENCH_CONFIG=tiny.
BENCH_CONFIG ?= small
BENCH_OUT ?= bench-out
bench: install
	$(BIN)/pip install --quiet -e ".[bench]"
	$(BIN)/python benchmarks/train_bench.py --config $(BENCH_CONFIG) --out $(BENCH_OUT)/$(BENCH_CONFIG)

clean:
	rm -rf $(DEMO) .pytest_cache
