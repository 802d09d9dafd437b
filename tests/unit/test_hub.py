"""One rule for "can the hub be asked", shared by validate, the dry run and lm-eval's offline fallback."""

from __future__ import annotations

import pytest

from synthpref import hub
from synthpref.stages.evaluate import general


@pytest.mark.parametrize("var", ["HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_any_offline_variable_means_not_asked(monkeypatch, var):
    import httpx

    monkeypatch.setattr(hub, "_STATE", {})
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    for other in hub.OFFLINE_VARS:
        monkeypatch.delenv(other, raising=False)
    monkeypatch.setenv(var, "1")
    monkeypatch.setattr(httpx, "head", lambda *a, **k: pytest.fail("the hub was asked"))
    assert hub.unreachable() == f"{var} is set"


def test_lm_eval_goes_offline_by_the_same_rule(monkeypatch):
    from synthpref.config import parse_config

    cfg = parse_config({"name": "t", "models": {"m": {"path": "smollm2-135m-instruct"}}, "target": "m",
                        "prompts": {"train": {"source": "advbench", "limit": 4}}})
    monkeypatch.setattr(hub, "_STATE", {"why": "HF_HUB_OFFLINE is set"})
    assert general.use_offline(cfg)
    monkeypatch.setattr(hub, "_STATE", {"why": None})
    assert not general.use_offline(cfg)
