# One-command set-up: `make demo` and `make test` install everything they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
DEMO ?= demo-out

.PHONY: install lint test test-fast demo bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch first and pinned: an unpinned torch pulled in by a dependency would be a multi-GB CUDA build.
# A GPU user who already has torch in the venv keeps it (pip sees the requirement satisfied).
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/pip install --quiet -e ".[dev,qlora,alpaca,deepspeed]"
	touch $@

install: $(VENV)/.installed

# ruff (pyproject.toml [tool.ruff]): pyflakes, pycodestyle, bugbear, pyupgrade, imports inside functions.
lint: install
	$(BIN)/ruff check aot_cli tests benchmarks

test: install lint
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

# aot train against TRL's DPOTrainer(loss_type="aot"), side by side (docs/performance.md); about 10 min for
# the small config on 2 CPU cores, three for BENCH_CONFIG=tiny.
BENCH_CONFIG ?= small
BENCH_OUT ?= bench-out
bench: install
	$(BIN)/pip install --quiet -e ".[bench]"
	$(BIN)/python benchmarks/train_bench.py --config $(BENCH_CONFIG) --out $(BENCH_OUT)/$(BENCH_CONFIG)
	$(BIN)/python benchmarks/packing_bench.py --config $(BENCH_CONFIG) --out $(BENCH_OUT)/packing-$(BENCH_CONFIG)
	$(BIN)/python benchmarks/generation_bench.py --out $(BENCH_OUT)/generation

# The demo: the whole chain on data and a model made on the spot (no downloads). aot_cli/tiny_data.py
# writes a preference set with a rule to learn (the chosen answer is in the mood the prompt asks
# for, cheerful or gloomy; the rejected one in the other), aot_cli/tiny_model.py a random-init tiny
# Llama whose tokenizer is trained on that set. Each step's target is its output file, so make
# re-runs only what changed; --overwrite lets a changed input rebuild a step's directory.
DEMO_ROWS ?= 1280
DEMO_SEED ?= 0
DEMO_DATA := $(DEMO)/source/prefs.jsonl
DEMO_TASKS ?= tests/fixtures/lm_eval_tasks
# One torch thread: a model this small only contends with itself on a few (shared) cores.
DEMO_THREADS ?= 1
AOT := $(BIN)/aot

demo: export OMP_NUM_THREADS = $(DEMO_THREADS)

$(DEMO_DATA): aot_cli/tiny_data.py | install
	$(BIN)/python -m aot_cli.tiny_data $@ --rows $(DEMO_ROWS) --seed $(DEMO_SEED)

$(DEMO)/tiny-model/config.json: $(DEMO_DATA)
	$(BIN)/python -m aot_cli.tiny_model $(DEMO)/tiny-model --corpus $(DEMO_DATA) --vocab 1024

$(DEMO)/data/manifest.json: $(DEMO_DATA)
	$(AOT) prepare $(DEMO_DATA) -o $(DEMO)/data --test-size 0.1 --overwrite

$(DEMO)/run/manifest.json: $(DEMO)/data/manifest.json $(DEMO)/tiny-model/config.json
	$(AOT) inspect $(DEMO)/data --model $(DEMO)/tiny-model -n 1 --max-length 128 --max-prompt-length 64
	$(AOT) train --model $(DEMO)/tiny-model --data $(DEMO)/data -o $(DEMO)/run --overwrite \
		--loss aot --max-steps 120 --batch-size 4 --grad-accum 4 --lr 5e-3 --max-length 128 --max-prompt-length 64 --save-steps 40

$(DEMO)/model/manifest.json: $(DEMO)/run/manifest.json
	$(AOT) merge $(DEMO)/run -o $(DEMO)/model --overwrite

$(DEMO)/eval-dominance/manifest.json: $(DEMO)/run/manifest.json
	$(AOT) eval dominance $(DEMO)/run -o $(DEMO)/eval-dominance --overwrite

$(DEMO)/eval-base/manifest.json: $(DEMO)/tiny-model/config.json
	$(AOT) eval tasks $(DEMO)/tiny-model --tasks aot_tiny_mc --include-path $(DEMO_TASKS) -o $(DEMO)/eval-base --overwrite

$(DEMO)/eval-tasks/manifest.json: $(DEMO)/model/manifest.json
	$(AOT) eval tasks $(DEMO)/model --tasks aot_tiny_mc --include-path $(DEMO_TASKS) -o $(DEMO)/eval-tasks --overwrite

demo: $(DEMO)/eval-dominance/manifest.json $(DEMO)/eval-base/manifest.json $(DEMO)/eval-tasks/manifest.json
	$(AOT) compare $(DEMO)/eval-base $(DEMO)/eval-tasks $(DEMO)/eval-dominance -o $(DEMO)/compare.md
	@echo "demo: artifacts in $(DEMO)/ (data, run, model, eval-*); plots: $(DEMO)/run/*.png $(DEMO)/eval-dominance/*.png"

clean:
	rm -rf $(DEMO) .pytest_cache
