# chatforge: `make demo` runs the pipeline on the embedded world; `make test` runs the tests.
# Both create .venv and install everything first. TORCH picks the torch build (CPU wheel here;
# on a CUDA machine `make demo TORCH=torch==2.13.0` from PyPI gets the CUDA build).

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test lint format clean

setup: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

demo: setup
	$(PY) scripts/run_data.py recipes/data.yaml
	$(PY) scripts/train_tokenizer.py recipes/tokenizer.yaml
	$(PY) scripts/run_pretrain.py recipes/pretrain.yaml
	$(PY) scripts/generate.py --model_name_or_path outputs/pretrain --prompt_file recipes/prompts/assistant.txt \
		--prompt "Where was $$($(PY) -c 'import json; print(next(r["subject"] for r in map(json.loads, open("data/world/facts.jsonl")) if r["relation"] == "birth_city"))') born?" \
		--stop "Human:" --num_samples 2 --max_new_tokens 40
	$(PY) scripts/run_sft.py recipes/sft.yaml
	$(PY) scripts/chat.py --model_name_or_path outputs/sft --prompt "Who are you?" --temperature 0
	@$(PY) scripts/summary.py outputs/pretrain outputs/sft

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
