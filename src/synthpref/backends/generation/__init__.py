"""Generation backends: one file each, registered here by name, imported only when selected.

Adding a backend: write `<name>.py` with a `GenerationBackend` subclass (and its `Options`),
add one line to REGISTRY, add one test. The same registry serves `evaluate.safety.backend`: a
backend that sets EVALUATES_TRAINED and implements `for_evaluation` answers the evaluate stage
too (tests/unit/test_backend_plugin.py shows the whole of it).
"""

from __future__ import annotations

import importlib

from ...errors import ConfigError, did_you_mean
from .base import EvalTarget, GenerationBackend, GenParams, GenRequest, GenResult  # noqa: F401

REGISTRY: dict[str, str] = {
    "hf": "synthpref.backends.generation.hf:HFBackend",
    "vllm": "synthpref.backends.generation.vllm_backend:VLLMBackend",
    "openai": "synthpref.backends.generation.openai_api:OpenAIBackend",
    "llamacpp": "synthpref.backends.generation.llamacpp:LlamaCppBackend",
    "responses": "synthpref.backends.generation.responses_file:ResponsesFileBackend",
    "ct2": "synthpref.backends.generation.ct2:CT2Backend",
}


def get_backend_class(name: str) -> type[GenerationBackend]:
    if name not in REGISTRY:
        raise ConfigError(f"unknown generation backend '{name}'{did_you_mean(name, REGISTRY)}")
    mod, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(mod), cls)
