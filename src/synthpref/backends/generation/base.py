"""The small interface every generation backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field

from ...config import ModelSpec, parse_options


@dataclass(frozen=True)
class GenRequest:
    key: str                 # response_id the result is stored under
    messages: tuple          # chat messages: ({"role": "user", "content": ...}, ...)
    seed: int                # per-record seed: the same record gives the same text on a re-run
    greedy: bool


@dataclass(frozen=True)
class GenParams:
    """Decoding settings. Sampling uses all of them; greedy decoding (the authors' greedy pass)
    takes the argmax with no repetition penalty and no n-gram blocking, unless `greedy_penalties`
    is set (synthpref's earlier behaviour, kept as a named option). Every backend honours this
    through `penalties(greedy)`."""

    temperature: float = 0.5
    top_p: float = 0.9
    top_k: int = 50                 # transformers' generate() default, which the authors' sampling ran with
    repetition_penalty: float = 1.2
    no_repeat_ngram_size: int = 3
    max_new_tokens: int = 128
    batch_size: int = 8
    greedy_penalties: bool = False
    # Decoding settings we do not set come from the model's generation_config.json, as in the
    # authors' generate() calls (backends with INHERITS_GENERATION_CONFIG honour it; `decoding`).
    inherit_generation_config: bool = False

    def penalties(self, greedy: bool) -> tuple[float, int]:
        """(repetition_penalty, no_repeat_ngram_size) for a greedy or a sampled request."""
        if greedy and not self.greedy_penalties:
            return 1.0, 0
        return self.repetition_penalty, self.no_repeat_ngram_size

    def decoding(self, greedy: bool, model_config: dict | None = None) -> tuple[float, int, int]:
        """(repetition_penalty, no_repeat_ngram_size, top_k) for a request, given the values the
        model's generation_config sets (`model_config`, unset keys absent or None).

        With `inherit_generation_config`, what the authors did not pass to generate() is the
        model's: their greedy call passed neither penalty (generate.py:235-243), so a model whose
        config sets repetition_penalty (e.g. 1.05) or no_repeat_ngram_size decodes with it; their
        sampling call passed no top_k (generate.py:124-136), so a model's own top_k wins over ours."""
        rep, ngram = self.penalties(greedy)
        top_k = self.top_k
        if self.inherit_generation_config and model_config:
            if greedy and not self.greedy_penalties:
                rep = float(model_config.get("repetition_penalty") or 1.0)
                ngram = int(model_config.get("no_repeat_ngram_size") or 0)
            if not greedy and model_config.get("top_k") is not None:
                top_k = int(model_config["top_k"])
        return rep, ngram, top_k


def banned_ngram_tokens(ids: list[int], n: int) -> set[int]:
    """Tokens that would complete an n-gram already present in `ids` (transformers'
    no_repeat_ngram_size rule, over prompt + output), for backends without that processor."""
    if n <= 0 or len(ids) + 1 < n:
        return set()
    prefix = tuple(ids[len(ids) - n + 1:]) if n > 1 else ()
    out = set()
    for i in range(len(ids) - n + 1):
        if tuple(ids[i:i + n - 1]) == prefix:
            out.add(ids[i + n - 1])
    return out


class NGramIndex:
    """banned_ngram_tokens for one growing sequence, incrementally: each call indexes only the
    tokens added since the previous call, so a decoding step costs O(new tokens), not O(length)
    (a vLLM batch of hundreds of long rows calls this every step)."""

    def __init__(self, n: int):
        self.n = n
        self.seen: dict[tuple, set[int]] = {}
        self.done = 0  # ids[:done] are indexed

    def banned(self, prompt: list[int], output: list[int] = (), k: int | None = None) -> set[int]:
        """Tokens banned after prompt + output[:k] (k: all of output), a sequence that only grows
        between calls. The two parts are read in place, never joined, so a step stays O(new tokens)."""
        n, p = self.n, len(prompt)
        length = p + (len(output) if k is None else k)
        if n <= 0:
            return set()

        def at(j: int) -> int:
            return prompt[j] if j < p else output[j - p]

        for j in range(max(self.done, n - 1), length):
            self.seen.setdefault(tuple(at(i) for i in range(j - n + 1, j)), set()).add(at(j))
        self.done = max(self.done, length)
        if length + 1 < n:
            return set()
        return self.seen.get(tuple(at(i) for i in range(length - n + 1, length)), set())


@dataclass(frozen=True)
class GenResult:
    key: str
    text: str
    n_tokens: int
    finish_reason: str = "stop"  # stop | length | error | refused
    refused: bool = False  # the API declined to answer (content filter / policy refusal), see openai_api.py


@dataclass(frozen=True)
class EvalTarget:
    """A model the evaluate stage wants answers from, as a backend's evaluation hooks see it."""

    name: str                   # 'sft' or a pair setting (for messages)
    spec: ModelSpec             # the starting model: prompt format, options, trust_remote_code
    device: str
    weights: Path | None        # trained weights (full weights or a LoRA adapter); None: the model at spec.path
    identity: Any               # JSON-able identity of the weights (a training run's inputs hash), for caches
    work_dir: Path              # eval/<name>/: where a backend may keep files for this model
    load: Callable[[], tuple]   # (model, tokenizer) in memory, a LoRA adapter merged; loaded once, freed by the stage
    release: Callable[[], None] = lambda: None  # free what `load` holds now (a later `load` loads it again)


class GenerationBackend(ABC):
    """Yield one GenResult per request (any order) so callers can write records as they come."""

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

    # Options that change speed or plumbing but not the texts: left out of the generate stage's
    # record hash, so e.g. raising max_concurrency does not throw away finished API responses.
    RUNTIME_OPTIONS: ClassVar[frozenset[str]] = frozenset()

    # What validate, estimate and evaluate ask of a backend instead of testing its name.
    NEEDS_LOCAL_WEIGHTS: ClassVar[bool] = True   # `path` names weights on disk / a hub repo / a packaged asset
    COSTS_MONEY: ClassVar[bool] = False          # each call is billed (estimate counts calls, not tokens)
    SECONDS_PER_CALL: ClassVar[float | None] = None  # nominal latency of one call, for the dry-run estimate
    # Can answer the evaluate stage's prompts with a trained model (`for_evaluation` below).
    EVALUATES_TRAINED: ClassVar[bool] = False
    INHERITS_GENERATION_CONFIG: ClassVar[bool] = False  # honours GenParams.inherit_generation_config

    def __init__(self, spec: ModelSpec, device: str = "cpu", **kwargs):
        self.spec = spec
        self.device = device
        self.options = parse_options(self.Options, spec.options,
                                     f"model '{spec.path}' (backend {spec.backend}): options")

    @classmethod
    def record_options(cls, options: dict, device: str) -> dict:
        """The options a record's text depends on, as the generate stage keys its records: runtime-only
        ones left out. A backend resolves values such as `auto` here, so that a run moved from CPU to
        GPU does not mix records made with different settings under one key."""
        return {k: v for k, v in options.items() if k not in cls.RUNTIME_OPTIONS}

    @classmethod
    def check_spec(cls, spec: ModelSpec) -> tuple[str, str] | None:
        """(field, problem) with where `spec` points, or None; for `synthpref validate`, so
        nothing is loaded or downloaded. Default: a packaged asset, a local folder or a hub id."""
        if not cls.NEEDS_LOCAL_WEIGHTS:
            return None
        from ...models import check_reference

        problem = check_reference(spec.path)
        return ("path", problem) if problem else None

    @abstractmethod
    def generate(self, requests: list[GenRequest], params: GenParams) -> Iterator[GenResult]:
        ...

    def close(self) -> None:
        """Free the model (one model in memory at a time)."""

    # -- evaluation hooks: the evaluate stage calls these, never a backend's name
    @classmethod
    def own_options(cls, spec: ModelSpec) -> ModelSpec:
        """`spec` keeping only the options this backend knows (an evaluated model may name another backend's)."""
        return spec.model_copy(update={"options": {k: v for k, v in spec.options.items()
                                                   if k in cls.Options.model_fields}})

    @classmethod
    def evaluation_ref(cls, target: EvalTarget) -> dict | None:
        """What this backend adds to the inputs hash of the evaluation answers (None: nothing, its
        answers are the reference ones), without loading or converting anything."""
        return None

    @classmethod
    def for_evaluation(cls, target: EvalTarget) -> tuple[Callable[[ModelSpec], "GenerationBackend"], Any]:
        """Prepare `target` (load, merge, convert: whatever this backend needs) and return (make a
        backend for one prompt format's spec, the HF tokenizer whose template shows the model's input).
        A format's spec sets `options.prompt_format` (alpaca: plain) on top of the model's options,
        which may name another backend's: keep your own (`own_options`)."""
        from ...errors import BackendError

        raise BackendError(f"generation backend '{target.spec.backend}' ({cls.__name__}) cannot answer with "
                           "a trained model; choose another evaluate.safety.backend")

    def end_evaluation(self) -> None:
        """One format's answers are done: free what this backend holds (not the stage's model)."""
        self.close()


class LocalModelOptions(BaseModel):
    """Options shared by backends that format prompts themselves (hf, vllm, llamacpp)."""

    model_config = ConfigDict(extra="forbid")
    prompt_format: Literal["auto", "chat", "plain", "raw"] = Field(
        "auto", description="auto: the model's chat template, plain for base models (rule in synthpref.chat); raw: "
        "the prompt text alone, no special tokens (generation only; the generate stage sets it for "
        "generate.sampling.generation_prompt: raw)")


def split_by_kind(requests: list[GenRequest]) -> tuple[list[GenRequest], list[GenRequest]]:
    """(greedy, sampled): the two are never batched together (different decoding)."""
    return [r for r in requests if r.greedy], [r for r in requests if not r.greedy]
