"""The small interface every generation backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Iterator, Literal

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

    def penalties(self, greedy: bool) -> tuple[float, int]:
        """(repetition_penalty, no_repeat_ngram_size) for a greedy or a sampled request."""
        if greedy and not self.greedy_penalties:
            return 1.0, 0
        return self.repetition_penalty, self.no_repeat_ngram_size


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


@dataclass(frozen=True)
class GenResult:
    key: str
    text: str
    n_tokens: int
    finish_reason: str = "stop"  # stop | length | error | refused
    refused: bool = False  # the API declined to answer (content filter / policy refusal), see openai_api.py


class GenerationBackend(ABC):
    """Yield one GenResult per request (any order) so callers can write records as they come."""

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

    # Options that change speed or plumbing but not the texts: left out of the generate stage's
    # record hash, so e.g. raising max_concurrency does not throw away finished API responses.
    RUNTIME_OPTIONS: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, spec: ModelSpec, device: str = "cpu", **kwargs):
        self.spec = spec
        self.device = device
        self.options = parse_options(self.Options, spec.options,
                                     f"model '{spec.path}' (backend {spec.backend}): options")

    @abstractmethod
    def generate(self, requests: list[GenRequest], params: GenParams) -> Iterator[GenResult]:
        ...

    def close(self) -> None:
        """Free the model (one model in memory at a time)."""


class LocalModelOptions(BaseModel):
    """Options shared by backends that format prompts themselves (hf, vllm, llamacpp)."""

    model_config = ConfigDict(extra="forbid")
    prompt_format: Literal["auto", "chat", "plain"] = Field(
        "auto", description="auto: the model's chat template, plain for base models (rule in synthpref.chat)")


def split_by_kind(requests: list[GenRequest]) -> tuple[list[GenRequest], list[GenRequest]]:
    """(greedy, sampled): the two are never batched together (different decoding)."""
    return [r for r in requests if r.greedy], [r for r in requests if not r.greedy]
