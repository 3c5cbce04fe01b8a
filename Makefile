# Two commands from a fresh machine: `make demo` runs the main job, `make test` runs the tests.
# Each creates .venv (when missing or when pyproject/constraints changed) and installs the project.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# A tested torch/torchvision pair for CPU machines; labs with GPUs install their own CUDA torch (README).
CONSTRAINTS := requirements/constraints.txt
STAMP  := $(VENV)/.stamp-dev

export NO_ALBUMENTATIONS_UPDATE := 1
export HF_HUB_OFFLINE := 1
export WANDB_MODE ?= offline
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: test test-slow demo lint bench clean

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e '.[dev]'
	$(BIN)/python -c "import torch, torchvision, timm, monai, openslide, tifffile, zarr, albumentations"
	touch $@

test: $(STAMP)
	$(BIN)/ruff check .
	WANDB_MODE=disabled $(BIN)/python -m pytest

test-slow: $(STAMP)
	WANDB_MODE=disabled $(BIN)/python -m pytest -m slow

lint: $(STAMP)
	$(BIN)/ruff check .

demo: $(STAMP)
	$(BIN)/stainldm demo --out demo-out

$(VENV)/.stamp-bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e '.[dev,bench]'
	touch $@

bench: $(VENV)/.stamp-bench
	$(BIN)/python benchmarks/io.py

clean:
	rm -rf $(VENV) demo-out bench-out .pytest_cache .ruff_cache
