"""The six paper configs: base checkpoints + SFT, the authors' decoding and evaluation, and a
dry-run plan in stage order whose sizes come from config.json facts, not from model names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from synthpref import estimate, hub, model_facts, runner
from synthpref.config import load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]
PAPER = sorted((ROOT / "configs" / "paper").glob("*.yaml"))
BASES = {"meta-llama/Llama-2-7b-hf", "mistralai/Mistral-7B-v0.1", "Qwen/Qwen2-7B", "meta-llama/Llama-3.1-8B",
         "mistralai/Mistral-7B-v0.3", "Qwen/Qwen2.5-7B"}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    import httpx

    def refuse(*a, **k):
        raise httpx.ConnectError("offline in tests")

    monkeypatch.setattr(httpx, "get", refuse)
    monkeypatch.setattr(hub, "_STATE", {"why": None})  # the hub "answers"; every request then fails


def test_six_configs_one_per_paper_model():
    cfgs = [load_config(p) for p in PAPER]
    assert {c.models[c.target].path for c in cfgs} == BASES
    for c in cfgs:
        assert c.train.sft.enabled
        ds = [(d.source, d.split, d.format) for d in c.train.sft.data()]
        assert ds == [("HuggingFaceH4/ultrachat_200k", "train_sft", "messages"),
                      ("PKU-Alignment/PKU-SafeRLHF", "train", "saferlhf_safer")]
        s = c.generate.sampling
        assert (s.greedy_penalties, s.top_k, s.temperature, s.top_p, s.repetition_penalty, s.no_repeat_ngram_size,
                s.max_new_tokens) == (False, 50, 0.5, 0.9, 1.2, 3, 128)
        assert c.evaluate.safety.formats == ["alpaca"] and c.evaluate.safety.unparsed == "count"
        assert c.models["gpt4o_released"].backend == "responses"
        assert c.roles.stronger and c.models[c.roles.stronger[0]].path in model_facts.FACTS


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.stem)
def test_dry_run_plan_is_in_stage_order_with_real_sizes(path, monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg = load_config(path)
    est = estimate.estimate(cfg)
    stages = [r[0] for r in est["rows"]]
    assert stages == sorted(stages, key=list(runner.ORDER).index) and stages[:3] == ["prompts", "sft", "sft"]
    assert est["device"] == "cuda" and est["gpu_hours"] > 0
    target = model_facts.model_size(cfg.models[cfg.target].path)
    assert target.source == "table" and 6.5e9 < target.params < 8.1e9
    gen = {r[1]: r for r in est["rows"] if r[0] == "generate"}
    assert gen["target"][4] is not None and gen["stronger"][4] > 0


def test_dry_run_with_seeds_counts_the_repeated_stages_once_per_seed(monkeypatch):
    """--seeds 3: prompts and SFT are shared (once); generate .. report run for every seed, so the
    total is the shared rows plus three times the rest."""
    from synthpref.cli import with_seeds

    monkeypatch.chdir(ROOT)
    cfg = load_config(PAPER[0])
    one, three = estimate.estimate(cfg), estimate.estimate(with_seeds(cfg, 3))
    assert one["seeds"] == 1 and one["repeated"] == []
    assert three["seeds"] == 3 and three["repeated"][0] == "generate" and "sft" not in three["repeated"]
    assert three["rows"] == one["rows"]  # the table stays one seed's
    shared = sum(r[3] for r in one["rows"] if r[3] is not None and r[0] not in three["repeated"])
    per_seed = one["total_s"] - shared
    assert shared > 0 and per_seed > 0
    # greedy-only models (the stronger model, GPT-4o) and the SFT model's evaluation are shared too
    once = [r for r in one["rows"] if r[0] == "generate" and r[1] in ("stronger", "gpt4o", "gpt4o_released")]
    assert once and all(estimate.per_seed_share(cfg, r) == 0.0 for r in once)
    ev = next(r for r in one["rows"] if r[0] == "evaluate")
    assert estimate.per_seed_share(cfg, ev) == pytest.approx(7 / 8)  # sft + seven settings
    repeated = sum(r[3] * estimate.per_seed_share(cfg, r) for r in one["rows"]
                   if r[3] is not None and r[0] in three["repeated"])
    assert 0 < repeated < per_seed
    assert three["total_s"] == pytest.approx(one["total_s"] + 2 * repeated)


def test_sizes_come_from_config_json_not_names(tmp_path):
    # A folder named like a 70B model holding a tiny config.json is tiny...
    d = tmp_path / "Llama-3.1-70B-Instruct"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 1000,
                                               "intermediate_size": 128, "num_attention_heads": 4,
                                               "tie_word_embeddings": True}), encoding="utf-8")
    sz = model_facts.model_size(str(d))
    assert sz.params == model_facts.count_params(json.loads((d / "config.json").read_text()))[0] < 200_000
    # ...and an unknown hub id whose config.json cannot be read has no size, whatever its name says.
    assert model_facts.model_size("someone/MyModel-7B") is None
    cfg = parse_config({"name": "x", "device": "cuda", "models": {"t": {"path": "someone/MyModel-7B"}}, "target": "t",
                        "prompts": {"train": {"source": "advbench", "limit": 4}}, "pairs": {"settings": ["self_rm"]}})
    rows = {(r[0], r[1]): r for r in estimate.estimate(cfg)["rows"]}
    assert rows[("generate", "t")][3] is None and rows[("generate", "t")][5] == "size unknown"


def test_sizing_a_packaged_model_that_is_not_fetched_fetches_nothing(monkeypatch):
    from synthpref import assets

    def no_fetch(*a, **k):
        raise AssertionError("the dry run fetched an asset")

    monkeypatch.setattr(assets, "is_cached", lambda name: False)
    monkeypatch.setattr(assets, "fetch", no_fetch)
    monkeypatch.setattr(assets, "resolve_asset_path", no_fetch)
    sz = model_facts.model_size("qwen2.5-coder-0.5b-instruct")
    assert sz.source == "table" and 0.4e9 < sz.params < 0.6e9
    assert model_facts.layer_count("smollm2-135m-instruct") == 30


def test_sft_is_costed_at_the_size_of_the_base_model_it_names(monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg = load_config(PAPER[0])
    stronger = cfg.roles.stronger[0]
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"base_model": stronger})})
    plan = estimate.Plan.of(cfg, 8, 8, 8)
    assert plan.start.params == plan.size(stronger).params > plan.target.params


def test_param_counts_match_the_published_sizes():
    """Computed from the config.json fields: Llama-2-7B 6.74B, Mistral-7B 7.24B, Qwen2-7B 7.62B,
    Llama-3.1-8B 8.03B, Mixtral-8x7B 46.7B (12.9B active), Qwen2-72B 72.7B."""
    def b(name, active=False):
        return round(model_facts.count_params(model_facts.FACTS[name])[int(active)] / 1e9, 2)

    assert b("meta-llama/Llama-2-7b-hf") == 6.74 and b("mistralai/Mistral-7B-v0.1") == 7.24
    assert b("Qwen/Qwen2-7B") == 7.62 and b("meta-llama/Llama-3.1-8B") == 8.03
    assert b("mistralai/Mixtral-8x7B-Instruct-v0.1") == 46.7 and b("mistralai/Mixtral-8x7B-Instruct-v0.1", True) == 12.88
    assert b("Qwen/Qwen2-72B-Instruct") == 72.71
