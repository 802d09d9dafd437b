"""vLLM backend: continuous batching on GPU, tensor and data parallel.

Prompts are formatted and tokenized here with the model's HF tokenizer by the same rule as the hf
backend (synthpref.chat), and passed to vLLM as token ids, so both backends see identical prompts.
Each request carries its record's seed in `SamplingParams(seed=...)`: vLLM then draws that
request's tokens from its own generator, so a text does not depend on which requests share the
engine with it (vLLM docs, "Reproducibility").

Parallelism: `tensor_parallel_size` splits one model over GPUs; `data_parallel_size` > 1 runs that
many independent engines in spawned processes, each on its own slice of the visible GPUs (with
vLLM's CPU build: of this process's CPU cores), and splits the requests between them (the
per-request seeds make the split irrelevant to the texts).

Decoding matches the hf backend: greedy requests get no repetition penalty and no n-gram blocking
(GenParams.penalties); sampled requests get temperature, top_p, top_k (set explicitly: vLLM's
default is none, transformers' is 50), repetition_penalty, and `no_repeat_ngram_size` through
vLLM's custom logits-processor interface: the engine is built with vllm_ngram's processor class
and each sampled request switches it on with `SamplingParams(extra_args=...)`. A vLLM without
that interface (or forced onto model runner V2) makes the backend refuse such a run with one line
naming the fix; the setting is never dropped silently. Tested on vLLM 0.32 (`make test-vllm`).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Iterator

from pydantic import Field

from ...chat import prompt_token_ids, stop_token_ids
from ...config import ModelSpec
from ...errors import BackendError
from .base import GenerationBackend, GenParams, GenRequest, GenResult, LocalModelOptions

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
    if ngram_problem() is None:
        from .vllm_ngram import PROCESSOR

        kw["logits_processors"] = [PROCESSOR]  # idle for requests that do not switch it on
        os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")  # the runner whose interface it implements
    return {**kw, **o.engine_kwargs}


def ngram_problem() -> str | None:
    """None if this vLLM can take the n-gram processor class; else the one-line refusal."""
    try:
        import vllm
    except ImportError:
        return None  # not installed: the backend says so itself
    try:
        from .vllm_ngram import PROCESSOR  # noqa: F401
    except ImportError as e:
        return (f"vllm backend: no_repeat_ngram_size needs vLLM's logits-processor classes "
                f"(vllm.v1.sample.logits_processor), which vLLM {getattr(vllm, '__version__', '?')} lacks "
                f"({str(e)[:80]}); pip install 'synthpref[vllm]' (the tested vLLM), " + _NGRAM_ALTERNATIVES)
    if os.environ.get("VLLM_USE_V2_MODEL_RUNNER", "").strip().lower() in ("1", "true"):
        return ("vllm backend: no_repeat_ngram_size needs vLLM's V1 model runner, and VLLM_USE_V2_MODEL_RUNNER=1 "
                "selects model runner V2 (another processor interface); unset VLLM_USE_V2_MODEL_RUNNER, "
                + _NGRAM_ALTERNATIVES)
    return None


_NGRAM_ALTERNATIVES = ("use backend: hf or ct2 for this model, or set generate.sampling.no_repeat_ngram_size: 0 "
                       "(a deviation from the authors' sampling)")


def _sampling_params(req: dict, params: dict, stop_ids: list[int]):
    from vllm import SamplingParams

    greedy = req["greedy"]
    rep, ngram = params["penalties_greedy"] if greedy else params["penalties_sample"]
    kw = dict(n=1, temperature=0.0 if greedy else params["temperature"], top_p=1.0 if greedy else params["top_p"],
              # vLLM's own default is no top-k (-1); HF generate() samples with top_k 50: set it explicitly.
              top_k=-1 if greedy or params["top_k"] <= 0 else params["top_k"],
              repetition_penalty=rep, max_tokens=params["max_new_tokens"], seed=None if greedy else req["seed"],
              stop_token_ids=stop_ids, skip_special_tokens=True)
    if ngram:  # switched on for this request only; the engine holds the processor class (vllm_ngram)
        kw["extra_args"] = {"no_repeat_ngram_size": ngram}
    return SamplingParams(**kw)


def _run_engine(llm, reqs: list[dict], params: dict, stop_ids: list[int]) -> list[tuple]:
    prompts = [{"prompt_token_ids": r["ids"]} for r in reqs]
    sps = [_sampling_params(r, params, stop_ids) for r in reqs]
    try:
        outs = llm.generate(prompts, sps, use_tqdm=False)
    except (ValueError, TypeError) as e:  # the engine refused a request's extra_args
        if "no_repeat_ngram_size" not in str(e):
            raise
        raise BackendError(f"vllm backend: the engine refused no_repeat_ngram_size ({str(e).splitlines()[0][:120]}); "
                           "the engine was built without synthpref's processor: " + _NGRAM_ALTERNATIVES) from None
    res = []
    for r, out in zip(reqs, outs):
        c = out.outputs[0]
        # token ids, decoded by the backend with the hf backend's rule (vLLM's own detokenizer holds
        # back a character cut off by max_tokens, where tokenizer.decode writes U+FFFD)
        res.append((r["key"], list(c.token_ids), "length" if c.finish_reason == "length" else "stop"))
    return res


def _dp_worker(rank: int, env: dict, engine_kwargs: dict, reqs: list[dict], params: dict, stop_ids: list[int], queue):
    """One data-parallel engine in its own process, pinned to its GPUs (or CPU cores) by `env`."""
    os.environ.update(env)
    llm = None
    try:
        from vllm import LLM

        llm = LLM(**engine_kwargs)
        queue.put((rank, _run_engine(llm, reqs, params, stop_ids), None))
    except BaseException as e:  # report to the parent instead of dying silently
        queue.put((rank, None, f"{type(e).__name__}: {e}"[:300]))
    finally:
        _shutdown(llm)


def _shutdown(llm) -> None:
    """Stop the engine's core process now (left to garbage collection, it can outlive a worker)."""
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        core.shutdown()


def _dp_envs(dp: int, tp: int, device: str) -> list[dict] | str:
    """Per engine: the environment pinning it to its share of GPUs, or on CPU (vLLM's CPU build) of
    this process's cores (VLLM_CPU_OMP_THREADS_BIND, '|' between tensor-parallel ranks); or why not."""
    need = dp * tp
    if device != "cpu":
        import torch

        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        gpus = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
        if len(gpus) < need:
            return f"needs {need} GPUs, {len(gpus)} visible"
        return [{"CUDA_VISIBLE_DEVICES": ",".join(gpus[r * tp:(r + 1) * tp])} for r in range(dp)]
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    if len(cores) < need:
        return f"needs {need} CPU cores (one per engine rank), {len(cores)} available"
    per = len(cores) // need
    ranks = [",".join(map(str, cores[i * per:(i + 1) * per])) for i in range(need)]
    return [{"VLLM_CPU_OMP_THREADS_BIND": "|".join(ranks[r * tp:(r + 1) * tp])} for r in range(dp)]



def collect(queue, procs, poll_s: float = 10.0):
    """(rank, results, error) from each data-parallel engine process as it reports. An engine that
    dies without reporting (killed for memory, a crash in native code) is an error naming it, not
    a wait for ever: it is declared lost after two polls find it exited and the queue empty."""
    import queue as queue_mod

    pending, lost = set(range(len(procs))), {}
    while pending:
        try:
            rank, res, err = queue.get(timeout=poll_s)
        except queue_mod.Empty:
            for r in sorted(pending):
                if procs[r].exitcode is not None:
                    lost[r] = lost.get(r, 0) + 1
                    if lost[r] >= 2:
                        raise BackendError(f"vllm data parallel: engine {r} exited with code {procs[r].exitcode} "
                                           "without answering (killed for memory? a crash?); see its log above, or "
                                           "lower data_parallel_size") from None
            continue
        pending.discard(rank)
        yield rank, res, err

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
                               "pip install 'synthpref[vllm]' (CUDA GPU; CPU: `make test-vllm` shows the CPU build) or use backend: hf") from None
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
            problem = ngram_problem() or self._ngram_missing()
            if problem:  # refused before any request runs, never silently dropped
                raise BackendError(f"model '{self.spec.path}': {problem}")
        reqs, p = self.engine_requests(requests, params)
        if self.llm is not None:
            for key, ids, finish in _run_engine(self.llm, reqs, p, self.stop_ids):
                yield self._result(key, ids, finish)
            return
        yield from self._generate_dp(reqs, p)

    def _result(self, key: str, ids: list[int], finish: str) -> GenResult:
        return GenResult(key, self.tokenizer.decode(ids, skip_special_tokens=True).strip(), len(ids), finish)

    def engine_requests(self, requests: list[GenRequest], params: GenParams) -> tuple[list[dict], dict]:
        """(one plain dict per request, the decoding settings): what _run_engine and the
        data-parallel workers take (plain data, so it pickles into spawned processes)."""
        reqs = [{"key": r.key, "ids": prompt_token_ids(self.tokenizer, self.spec, r.messages), "seed": r.seed,
                 "greedy": r.greedy} for r in requests]
        p = {"temperature": params.temperature, "top_p": params.top_p, "top_k": params.top_k,
             "penalties_greedy": params.penalties(True), "penalties_sample": params.penalties(False),
             "max_new_tokens": params.max_new_tokens}
        return reqs, p

    def _ngram_missing(self) -> str | None:
        from .vllm_ngram import PROCESSOR

        if PROCESSOR in self.engine_kwargs.get("logits_processors", ()):
            return None
        return ("vllm backend: options.engine_kwargs.logits_processors replaces synthpref's n-gram processor; add "
                f"'{PROCESSOR}' to that list, or " + _NGRAM_ALTERNATIVES)

    def _generate_dp(self, reqs: list[dict], p: dict) -> Iterator[GenResult]:
        import multiprocessing as mp

        o = self.options
        envs = _dp_envs(o.data_parallel_size, o.tensor_parallel_size, self.device)
        if isinstance(envs, str):
            raise BackendError(f"model '{self.spec.path}': data_parallel_size {o.data_parallel_size} x "
                               f"tensor_parallel_size {o.tensor_parallel_size} {envs}; lower data_parallel_size")
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        self.dp_split: dict[int, int] = {}  # engine rank -> requests it answered (last call)
        procs = []
        for rank, env in enumerate(envs):
            shard = reqs[rank::o.data_parallel_size]
            proc = ctx.Process(target=_dp_worker, args=(rank, env, self.engine_kwargs, shard, p, self.stop_ids, queue))
            proc.start()
            procs.append(proc)
        try:
            errors = []
            for rank, res, err in collect(queue, procs):
                if err:
                    errors.append(f"engine {rank}: {err}")
                    continue
                self.dp_split[rank] = len(res)
                for key, ids, finish in res:
                    yield self._result(key, ids, finish)
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
            _shutdown(self.llm)
            try:
                from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

                destroy_model_parallel()
                destroy_distributed_environment()
            except Exception:  # older/newer vllm layouts: freeing memory below still helps
                pass
        self.llm = None
        free()
