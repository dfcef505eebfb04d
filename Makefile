# usjepa: set-up, demo and tests. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch and torchvision are pinned in the same pip command as the package: a pip run that leaves torch
# unpinned may swap it for another build. setup.cfg itself only declares ranges.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast lint slurm-up slurm-down bench gpu-check clean

setup: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH_PINS) -e ".[dev]"
	touch $@

demo: setup
	$(BIN)/usjepa demo

# In CI (CI=true) or with USJEPA_SLURM=1 a single-node SLURM cluster is started on localhost first
# (needs root and apt-get); elsewhere the tests marked `slurm` are skipped unless `sinfo` is on PATH.
test: setup
	@if [ "$${CI:-}" = "true" ] || [ "$${USJEPA_SLURM:-}" = "1" ]; then \
		bash launch/slurm_local.sh up && export USJEPA_REQUIRE_SLURM=1; fi; \
		$(BIN)/python -m pytest --durations=25 $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -m "not slow and not slurm" $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .

slurm-up:
	bash launch/slurm_local.sh up

slurm-down:
	bash launch/slurm_local.sh down

bench: setup
	$(BIN)/python benchmarks/run_all.py

# One GPU, at most 8 minutes: CUDA checks, then the ViT-B/16 SALT step and attention kernels measured into
# benchmarks/results/gpu.json and gpu.md. Needs only torch and timm (README: "GPU check"), so it does not depend on
# `setup`; GPU_PYTHON picks the interpreter (default: the venv's when it exists, else python3).
GPU_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON))
gpu-check:
	PYTHONPATH=$(CURDIR) $(GPU_PYTHON) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
