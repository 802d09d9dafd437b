# Two entry points for a fresh machine: `make demo` (the embedded default study) and `make test`.
# Both create .venv, install a CPU torch unless one is already importable, then this package.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_CPU := torch==2.13.0

.PHONY: install demo test test-fast clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

install: $(BIN)/python
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q $(TORCH_CPU)
	$(BIN)/python -m pip install -q -e ".[test]"

demo: install
	$(BIN)/synthpref run configs/demo.yaml

test: install
	$(BIN)/python -m pytest -q --timeout=1800

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) runs
