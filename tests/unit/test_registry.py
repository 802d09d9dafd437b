"""Adding a backend is one file + one registry line + one test: the config checks names against the
registries (no Literal to edit), with a "did you mean" for typos."""

from __future__ import annotations

import pytest

from synthpref.backends import generation, scoring
from synthpref.config import parse_config
from synthpref.errors import ConfigError


def _cfg(backend="hf", kind="keywords"):
    return {"name": "x", "models": {"m": {"path": "some/model", "backend": backend}}, "target": "m",
            "prompts": {"train": {"source": "advbench"}},
            "score": {"scorers": {"s": {"kind": kind}}, "reward": "s"}}


def test_typos_get_did_you_mean():
    with pytest.raises(ConfigError, match=r"models\.m\.backend: unknown generation backend 'opnai' \(did you mean 'openai'\?\)"):
        parse_config(_cfg(backend="opnai"))
    with pytest.raises(ConfigError, match=r"score\.scorers\.s\.kind: unknown scorer kind 'keyword' \(did you mean 'keywords'\?\)"):
        parse_config(_cfg(kind="keyword"))


def test_a_registry_line_is_all_the_config_needs(monkeypatch):
    monkeypatch.setitem(generation.REGISTRY, "mybackend", "mypkg.mod:MyBackend")
    monkeypatch.setitem(scoring.REGISTRY, "myscorer", "mypkg.mod:MyScorer")
    cfg = parse_config(_cfg(backend="mybackend", kind="myscorer"))
    assert cfg.models["m"].backend == "mybackend" and cfg.score.scorers["s"].kind == "myscorer"
