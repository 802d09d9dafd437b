"""llama.cpp backend (llama-cpp-python, optional extra `synthpref[llamacpp]`): runs the GGUF file
itself, quantized, which is the fastest way to sample on a CPU.

The model file: `options.gguf_file`, else the packaged asset's GGUF (e.g. smollm2-135m-instruct),
else `path` itself when it is a .gguf file. Prompt format follows synthpref.chat: a chat model
goes through `create_chat_completion` (llama.cpp applies the template stored in the GGUF); a base
model, or one whose GGUF has no template, gets the plain template through `create_completion`.
Every call passes the record's seed, and llama.cpp's sampler is re-seeded per call, so a text
depends only on its seed. `no_repeat_ngram_size` has no llama.cpp sampler, so it runs as a
logits processor; `repetition_penalty` maps to `repeat_penalty`. Greedy requests get neither
(GenParams.penalties), as in the authors' greedy pass.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

from pydantic import Field

from ...chat import BASE_MODELS, format_plain, format_raw, prompt_format_option, with_system
from ...config import ModelSpec
from ...errors import BackendError, ConfigError
from .base import GenerationBackend, GenParams, GenRequest, GenResult, LocalModelOptions

log = logging.getLogger(__name__)


def gguf_path(spec: ModelSpec, explicit: str | None = None) -> Path:
    from ... import assets

    if explicit:
        p = Path(explicit).expanduser()
    elif spec.path in assets.ASSETS and assets.ASSETS[spec.path].gguf:
        p = assets.fetch(spec.path) / assets.ASSETS[spec.path].gguf
    else:
        p = Path(spec.path).expanduser()
    if p.suffix != ".gguf" or not p.is_file():
        raise ConfigError(f"model '{spec.path}': backend llamacpp needs a GGUF file; '{p}' is not one "
                          "(set options.gguf_file or use a packaged GGUF model)")
    return p


def _no_repeat_ngram(n: int):
    """llama-cpp-python logits processor (input_ids, scores) -> scores with transformers'
    no_repeat_ngram_size rule over prompt + output."""
    from .base import banned_ngram_tokens

    def proc(input_ids, scores):
        banned = banned_ngram_tokens([int(t) for t in input_ids], n)
        if banned:
            scores[list(banned)] = float("-inf")
        return scores

    return proc


class LlamaCppBackend(GenerationBackend):
    class Options(LocalModelOptions):
        gguf_file: str | None = Field(None, description="path of the .gguf file (default: from the model's path)")
        n_ctx: int = Field(2048, ge=128, description="context window")
        n_threads: int | None = Field(None, ge=1, description="CPU threads (default: llama.cpp's choice)")
        n_gpu_layers: int = Field(0, description="layers offloaded to the GPU (-1: all)")

    RUNTIME_OPTIONS = frozenset({"n_threads", "n_gpu_layers"})

    def __init__(self, spec: ModelSpec, device: str = "cpu", **kwargs):
        super().__init__(spec, device)
        try:
            from llama_cpp import Llama
        except ImportError:
            raise BackendError(f"model '{spec.path}' uses backend 'llamacpp' but llama-cpp-python is not installed; "
                               "pip install 'synthpref[llamacpp]' or use backend: hf") from None
        o = self.options
        self.path = gguf_path(spec, o.gguf_file)
        self.llm = Llama(model_path=str(self.path), n_ctx=o.n_ctx, n_threads=o.n_threads,
                         n_gpu_layers=o.n_gpu_layers, seed=0, verbose=False)
        has_template = bool((self.llm.metadata or {}).get("tokenizer.chat_template"))
        fmt = prompt_format_option(spec)
        if fmt == "chat" and not has_template:
            raise ConfigError(f"model '{spec.path}': prompt_format is 'chat' but {self.path.name} has no chat template")
        self.chat = fmt == "chat" or (fmt == "auto" and has_template and spec.path not in BASE_MODELS)

    def _one(self, req: GenRequest, params: GenParams) -> GenResult:
        rep, ngram = params.penalties(req.greedy)  # greedy: no penalties unless greedy_penalties
        kw = dict(max_tokens=params.max_new_tokens, temperature=0.0 if req.greedy else params.temperature,
                  top_p=1.0 if req.greedy else params.top_p, top_k=1 if req.greedy else max(params.top_k, 0),
                  repeat_penalty=rep, seed=req.seed)
        if ngram:
            kw["logits_processor"] = [_no_repeat_ngram(ngram)]
        if self.chat:
            out = self.llm.create_chat_completion(messages=with_system(self.spec, req.messages), **kw)
            choice = out["choices"][0]
            text = choice["message"]["content"] or ""
        else:
            if prompt_format_option(self.spec) == "raw":  # the authors' prompt: the text alone, no BOS added (as
                text = format_raw(self.spec, req.messages)  # the hf backend's add_special_tokens=False); unlike hf,
                # special-token strings inside the text stay plain text here (special=False)
                prompt = self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
            else:  # plain: llama.cpp adds the model's BOS, as the tokenizer's usual special tokens do
                prompt = format_plain(self.spec, req.messages)
            out = self.llm.create_completion(prompt=prompt, **kw)
            choice = out["choices"][0]
            text = choice["text"]
        n = (out.get("usage") or {}).get("completion_tokens", 0)
        return GenResult(req.key, text.strip(), int(n), "length" if choice.get("finish_reason") == "length" else "stop")

    def generate(self, requests: list[GenRequest], params: GenParams) -> Iterator[GenResult]:
        for req in requests:
            yield self._one(req, params)

    def close(self) -> None:
        from ...models import free

        if getattr(self, "llm", None) is not None and hasattr(self.llm, "close"):
            self.llm.close()
        self.llm = None
        free()
