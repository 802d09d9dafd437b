"""vLLM backend: continuous batching on GPU, tensor and data parallel.

Prompts are formatted and tokenized here with the model's HF tokenizer by the same rule as the hf
backend (synthpref.chat), and passed to vLLM as token ids, so both backends see identical prompts.
Each request carries its record's seed in `SamplingParams(seed=...)`: vLLM then draws that
request's tokens from its own generator, so a text does not depend on which requests share the
engine with it (vLLM docs, "Reproducibility").

Parallelism: `tensor_parallel_size` splits one model over GPUs; `data_parallel_size` > 1 runs that
many independent engines in spawned processes, each on its own slice of the visible GPUs, and
splits the requests between them (the per-request seeds make the split irrelevant to the texts).

Decoding matches the hf backend: greedy requests get no repetition penalty and no n-gram blocking
(GenParams.penalties); sampled requests get temperature, top_p, top_k (set explicitly: vLLM's
default is none, transformers' is 50), repetition_penalty, and `no_repeat_ngram_size` through a
per-request logits processor (NoRepeatNGram). A vLLM whose engine refuses per-request logits
processors (the V1 engine) makes the backend refuse the run with a message naming the fixes;
the setting is never dropped silently.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Iterator

from pydantic import Field

from ...chat import prompt_token_ids, stop_token_ids
from ...config import ModelSpec
from ...errors import BackendError
from .base import GenerationBackend, GenParams, GenRequest, GenResult, LocalModelOptions, banned_ngram_tokens

log = logging.getLogger(__name__)


def _engine_kwargs(spec: ModelSpec, o: "VLLMBackend.Options") -> dict:
    from ...models import resolve_path

    kw: dict[str, Any] = {
        "model": resolve_path(spec.path), "tensor_parallel_size": o.tensor_parallel_size,
        "dtype": "bfloat16" if spec.dtype == "auto" else spec.dtype,
        "trust_remote_code": spec.trust_remote_code, "revision": spec.revision,
        "gpu_memory_utilization": o.gpu_memory_utilization, "enforce_eager": o.enforce_eager, "seed": 0,
        # vLLM's "auto" falls back to pickle (.bin/.pt) weights; only when the config allows it.
        "load_format": "auto" if spec.allow_pickle else "safetensors",
    }
    if o.max_model_len:
        kw["max_model_len"] = o.max_model_len
    return {**kw, **o.engine_kwargs}


class NoRepeatNGram:
    """Per-request vLLM logits processor with transformers' no_repeat_ngram_size rule (prompt +
    output so far), so the vllm backend samples like the hf backend."""

    def __init__(self, n: int):
        self.n = n

    def __call__(self, prompt_ids, output_ids, logits):
        banned = banned_ngram_tokens([*prompt_ids, *output_ids], self.n)
        if banned:
            logits[list(banned)] = float("-inf")
        return logits


def _sampling_params(req: dict, params: dict, stop_ids: list[int]):
    from vllm import SamplingParams

    greedy = req["greedy"]
    rep, ngram = params["penalties_greedy"] if greedy else params["penalties_sample"]
    kw = dict(n=1, temperature=0.0 if greedy else params["temperature"], top_p=1.0 if greedy else params["top_p"],
              # vLLM's own default is no top-k (-1); HF generate() samples with top_k 50: set it explicitly.
              top_k=-1 if greedy or params["top_k"] <= 0 else params["top_k"],
              repetition_penalty=rep, max_tokens=params["max_new_tokens"], seed=None if greedy else req["seed"],
              stop_token_ids=stop_ids, skip_special_tokens=True)
    if ngram:
        kw["logits_processors"] = [NoRepeatNGram(ngram)]
    try:
        return SamplingParams(**kw)
    except (TypeError, ValueError) as e:  # vLLM V1 engines take no per-request logits processors
        raise BackendError(_NGRAM_REFUSAL.format(n=ngram, err=str(e).splitlines()[0][:120])) from None


_NGRAM_REFUSAL = ("vllm backend: no_repeat_ngram_size {n} needs a per-request logits processor, which this vLLM "
                  "refused ({err}); run with VLLM_USE_V1=0, use backend: hf for this model, or set "
                  "generate.sampling.no_repeat_ngram_size: 0 (a deviation from the authors' sampling)")


def check_ngram_support() -> str | None:
    """None if this vLLM accepts a per-request logits processor; else the refusal message."""
    try:
        from vllm import SamplingParams

        SamplingParams(logits_processors=[NoRepeatNGram(3)])
    except ImportError:
        return None  # not installed: the backend reports that itself
    except (TypeError, ValueError) as e:
        return _NGRAM_REFUSAL.format(n=3, err=str(e).splitlines()[0][:120])
    return None


def _run_engine(llm, reqs: list[dict], params: dict, stop_ids: list[int]) -> list[tuple]:
    prompts = [{"prompt_token_ids": r["ids"]} for r in reqs]
    sps = [_sampling_params(r, params, stop_ids) for r in reqs]
    try:
        outs = llm.generate(prompts, sps, use_tqdm=False)
    except (ValueError, TypeError) as e:  # the V1 engine refuses per-request logits processors here
        if "logits" not in str(e).lower():
            raise
        n = max(params["penalties_greedy"][1], params["penalties_sample"][1])
        raise BackendError(_NGRAM_REFUSAL.format(n=n, err=str(e).splitlines()[0][:120])) from None
    res = []
    for r, out in zip(reqs, outs):
        c = out.outputs[0]
        res.append((r["key"], c.text.strip(), len(c.token_ids), "length" if c.finish_reason == "length" else "stop"))
    return res


def _dp_worker(rank: int, gpus: str, engine_kwargs: dict, reqs: list[dict], params: dict, stop_ids: list[int], queue):
    """One data-parallel engine in its own process, pinned to its GPUs."""
    os.environ["CUDA_VISIBLE_DEVICES"] = gpus
    try:
        from vllm import LLM

        llm = LLM(**engine_kwargs)
        queue.put((rank, _run_engine(llm, reqs, params, stop_ids), None))
    except BaseException as e:  # report to the parent instead of dying silently
        queue.put((rank, None, f"{type(e).__name__}: {e}"[:300]))


class VLLMBackend(GenerationBackend):
    class Options(LocalModelOptions):
        tensor_parallel_size: int = Field(1, ge=1, description="GPUs per engine (tensor parallel)")
        data_parallel_size: int = Field(1, ge=1, description="independent engines, each on tensor_parallel_size GPUs")
        gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
        max_model_len: int | None = Field(None, ge=16, description="context length cap (saves KV-cache memory)")
        enforce_eager: bool = Field(False, description="disable CUDA graphs (slower, starts faster)")
        engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="passed through to vllm.LLM")

    RUNTIME_OPTIONS = frozenset({"tensor_parallel_size", "data_parallel_size", "gpu_memory_utilization", "enforce_eager"})

    def __init__(self, spec: ModelSpec, device: str = "cuda", **kwargs):
        super().__init__(spec, device)
        try:
            import vllm  # noqa: F401
        except ImportError:
            raise BackendError(f"model '{spec.path}' uses backend 'vllm' but vllm is not installed; "
                               "pip install 'synthpref[vllm]' (CUDA GPU needed) or use backend: hf") from None
        from ...models import load_tokenizer

        self.tokenizer = load_tokenizer(spec)
        self.stop_ids = stop_token_ids(self.tokenizer, spec)
        self.engine_kwargs = _engine_kwargs(spec, self.options)
        self.llm = None
        if self.options.data_parallel_size == 1:
            from vllm import LLM

            self.llm = LLM(**self.engine_kwargs)

    def generate(self, requests: list[GenRequest], params: GenParams) -> Iterator[GenResult]:
        if max(params.penalties(True)[1], params.penalties(False)[1]):
            problem = check_ngram_support()
            if problem:  # refused before any request runs, never silently dropped
                raise BackendError(f"model '{self.spec.path}': {problem}")
        reqs = [{"key": r.key, "ids": prompt_token_ids(self.tokenizer, self.spec, r.messages), "seed": r.seed,
                 "greedy": r.greedy} for r in requests]
        p = {"temperature": params.temperature, "top_p": params.top_p, "top_k": params.top_k,
             "penalties_greedy": params.penalties(True), "penalties_sample": params.penalties(False),
             "max_new_tokens": params.max_new_tokens}
        if self.llm is not None:
            for key, text, n, finish in _run_engine(self.llm, reqs, p, self.stop_ids):
                yield GenResult(key, text, n, finish)
            return
        yield from self._generate_dp(reqs, p)

    def _generate_dp(self, reqs: list[dict], p: dict) -> Iterator[GenResult]:
        import multiprocessing as mp

        import torch

        o = self.options
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        gpus = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
        need = o.data_parallel_size * o.tensor_parallel_size
        if len(gpus) < need:
            raise BackendError(f"model '{self.spec.path}': data_parallel_size {o.data_parallel_size} x "
                               f"tensor_parallel_size {o.tensor_parallel_size} needs {need} GPUs, {len(gpus)} visible")
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        procs = []
        for rank in range(o.data_parallel_size):
            shard = reqs[rank::o.data_parallel_size]
            mine = ",".join(gpus[rank * o.tensor_parallel_size:(rank + 1) * o.tensor_parallel_size])
            proc = ctx.Process(target=_dp_worker, args=(rank, mine, self.engine_kwargs, shard, p, self.stop_ids, queue))
            proc.start()
            procs.append(proc)
        try:
            errors = []
            for _ in procs:
                rank, res, err = queue.get()
                if err:
                    errors.append(f"engine {rank}: {err}")
                    continue
                for key, text, n, finish in res:
                    yield GenResult(key, text, n, finish)
            if errors:
                raise BackendError(f"vllm data parallel, model '{self.spec.path}': {errors[0]}")
        finally:
            for proc in procs:
                proc.join(timeout=60)
                if proc.is_alive():
                    proc.terminate()

    def close(self) -> None:
        from ...models import free

        if self.llm is not None:
            try:
                from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

                destroy_model_parallel()
                destroy_distributed_environment()
            except Exception:  # older/newer vllm layouts: freeing memory below still helps
                pass
        self.llm = None
        free()
