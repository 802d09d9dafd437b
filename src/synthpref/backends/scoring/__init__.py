"""Scoring backends (reward models, LLM judges, keyword matcher, offline embedding RM).

Adding one: write `<name>.py` with a `Scorer` subclass, add one line to REGISTRY, add one test.
"""

from __future__ import annotations

import importlib

from ...errors import ConfigError, did_you_mean

REGISTRY: dict[str, str] = {
    "keywords": "synthpref.backends.scoring.keywords:KeywordScorer",
    "reward_model": "synthpref.backends.scoring.reward_model:RewardModelScorer",
    "llm_judge": "synthpref.backends.scoring.llm_judge:LLMJudgeScorer",
    "embedding_rm": "synthpref.backends.scoring.embedding_rm:EmbeddingRMScorer",
    "harm_head": "synthpref.backends.scoring.harm_head:HarmHeadScorer",
}


def get_scorer_class(kind: str):
    if kind not in REGISTRY:
        raise ConfigError(f"unknown scorer kind '{kind}'{did_you_mean(kind, REGISTRY)}")
    mod, cls = REGISTRY[kind].split(":")
    return getattr(importlib.import_module(mod), cls)
