"""The small interface every scorer implements, and `make_scorer` to build one by name.

A scorer maps (prompt, response) pairs to a score where higher is better (safer / more
preferred) and, where it can tell, a harmful flag for the attack success rate. Constructing a
scorer is cheap (no model is loaded), so its `version` can go into the score stage's inputs
hash before deciding whether any work is left; the model loads on the first `score` call and
is freed by `close`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Iterator

from pydantic import BaseModel, ConfigDict

from ...config import ModelSpec, ScorerSpec, StudyConfig, parse_options
from ...errors import BackendError, ConfigError, did_you_mean


@dataclass(frozen=True)
class ScoreItem:
    key: str        # response_id (or any caller key) the result is returned under
    prompt: str
    response: str


@dataclass(frozen=True)
class ScoreResult:
    key: str
    score: float | None     # higher = better; None when the scorer's output could not be parsed
    harmful: bool | None    # for ASR; None when the scorer cannot tell
    raw: Any = None         # the scorer's raw output (judge text, logit, matched keyword)
    parsed: bool = True     # False: raw output unparseable, score/harmful are None


class Scorer(ABC):
    """Yield one ScoreResult per item (any order); `version` changes whenever rubric or logic does."""

    version: str = "0"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

    def __init__(self, name: str, spec: ScorerSpec, cfg: StudyConfig | None = None, device: str = "cpu"):
        self.name = name
        self.spec = spec
        self.cfg = cfg
        self.device = device
        self.options = parse_options(self.Options, spec.options, f"score.scorers.{name}.options")

    @abstractmethod
    def score(self, items: list[ScoreItem]) -> Iterator[ScoreResult]:
        ...

    def close(self) -> None:
        """Free the model (one model in memory at a time)."""

    def identity(self) -> dict:
        """What determines this scorer's outputs, for cache hashes: its spec (minus batch size,
        which only changes speed), the resolved model spec (path, revision, backend options)
        and the code version. A changed judge model therefore re-scores instead of reusing."""
        model = scorer_model_spec(self.spec.model, self.cfg).model_dump(mode="json") if self.spec.model else None
        return {"spec": self.spec.model_dump(mode="json", exclude={"batch_size"}), "model": model,
                "version": self.version}


def scorer_model_spec(ref: str, cfg) -> ModelSpec:
    """The judge/RM model: a named entry of cfg.models, else an asset name, path or hub id."""
    if cfg is not None and ref in cfg.models:
        return cfg.models[ref]
    return ModelSpec(path=ref)


def scorer_spec(name: str, cfg: StudyConfig | None) -> ScorerSpec:
    """The spec for scorer `name`: from cfg.score.scorers, or the built-in 'keywords' matcher."""
    scorers = cfg.score.scorers if cfg is not None else {}
    if name in scorers:
        return scorers[name]
    if name == "keywords":
        return ScorerSpec(kind="keywords")
    raise ConfigError(f"scorer '{name}' is not in score.scorers{did_you_mean(name, [*scorers, 'keywords'])}")


def make_scorer(name: str, cfg: StudyConfig | None, device: str = "cpu") -> Scorer:
    from . import get_scorer_class

    spec = scorer_spec(name, cfg)
    return get_scorer_class(spec.kind)(name, spec, cfg, device)


def score_texts(scorer_name: str, cfg: StudyConfig, items: list[ScoreItem], device: str | None = None) -> list[ScoreResult]:
    """Score `items` with scorer `scorer_name` (a name in score.scorers, or 'keywords'); results
    in the order of `items`. Loads the scorer's model and frees it before returning."""
    from ...models import pick_device

    scorer = make_scorer(scorer_name, cfg, device or pick_device(cfg.device))
    try:
        got = {r.key: r for r in scorer.score(list(items))}
    finally:
        scorer.close()
    missing = [it.key for it in items if it.key not in got]
    if missing:
        raise BackendError(f"scorer '{scorer_name}' returned no result for {len(missing)} item(s) (first: {missing[0]})")
    return [got[it.key] for it in items]
