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

.PHONY: test test-slow demo lint bench bench-gpu clean browser valis-env

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e '.[dev]'
	$(BIN)/python -c "import torch, torchvision, timm, monai, openslide, tifffile, zarr, albumentations"
	touch $@

# The report's browser test needs Debian's chromium; as root it is installed here, elsewhere the
# test is skipped with the command to run (apt-get install -y chromium).
browser:
	@command -v chromium >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1 || \
	  apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 || \
	  (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1) || \
	  echo "note: could not install chromium; the report's browser test will be skipped"

# The suite (slow tests excluded) and, at its end, the 20 slowest tests: who dominates its minutes.
test: $(STAMP) browser
	$(BIN)/ruff check .
	WANDB_MODE=disabled $(BIN)/python -m pytest --durations=20

# The heavy end-to-end checks marked `slow` (each repeats, bigger, what a faster test covers).
test-slow: $(STAMP) browser
	WANDB_MODE=disabled $(BIN)/python -m pytest -m slow --durations=20

lint: $(STAMP)
	$(BIN)/ruff check .

demo: $(STAMP)
	$(BIN)/stainldm demo --out demo-out

$(VENV)/.stamp-bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e '.[dev,bench]'
	touch $@

bench: $(VENV)/.stamp-bench
	$(BIN)/python benchmarks/io.py

# On a machine with a CUDA GPU: the lab-f4 training and staining figures (about 5 minutes on an H200).
bench-gpu: $(STAMP)
	$(BIN)/python benchmarks/gpu.py

# VALIS (valis-wsi), the registration benchmark's outside reference, in its own venv: valis-wsi 1.2
# needs numpy<2 (ours is 2), OpenCV-contrib 4.9.0.80, torch + torchvision (the tested pair of
# $(CONSTRAINTS): PyPI's torchvision does not import beside a CPU-only torch) and libvips (the
# pyvips-binary wheel). Its JVM part (Bio-Formats) is never started: benchmarks/_valis_register.py
# reads the TIFFs through libvips. 6.5 GB, about 3.5 minutes from this machine's local wheels.
VALIS_VENV := .venv-valis
VALIS_PINS := valis-wsi==1.2.0 numpy==1.26.4 pyvips==3.2.0 pyvips-binary==8.18.7

$(VALIS_VENV)/.stamp: $(CONSTRAINTS)
	test -x $(VALIS_VENV)/bin/python || $(PYTHON) -m venv $(VALIS_VENV)
	$(VALIS_VENV)/bin/python -m pip install --quiet -c $(CONSTRAINTS) $(VALIS_PINS)
	$(VALIS_VENV)/bin/python benchmarks/_valis_register.py --check
	touch $@

valis-env: $(VALIS_VENV)/.stamp

clean:
	rm -rf $(VENV) $(VALIS_VENV) demo-out bench-out .pytest_cache .ruff_cache
