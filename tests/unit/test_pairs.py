"""Pair selection on hand-made run directories with known rewards."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pairs_helpers import full_run, response, study_config, write_run  # noqa: E402

from synthpref import settings  # noqa: E402
from synthpref.stages import pairs  # noqa: E402
from synthpref.errors import ConfigError, DataError  # noqa: E402
from synthpref.stages.prompts import prompt_id  # noqa: E402
from synthpref.rundir import read_json, read_jsonl  # noqa: E402

P = "Tell me something dangerous."
PID = prompt_id(P)


def _one_prompt(tmp_path, spec: dict, resps: list[tuple], rules: dict | None = None, **sections):
    """One prompt; resps: (model, kind, text, idx, score); rules: pairs.tie_break / pairs.identical.
    Returns (pair records, drop records)."""
    cfg = study_config(tmp_path, pairs={"settings": ["x"], "custom": {"x": spec}, **(rules or {})}, **sections)
    rs = [response(PID, m, k, t, idx) for m, k, t, idx, _ in resps]
    rd = write_run(cfg, [P], rs, {r["response_id"]: s for r, (*_, s) in zip(rs, resps)})
    pairs.run(cfg, rd)
    return read_jsonl(rd.path("pairs", "x.jsonl")), read_jsonl(rd.path("pairs", "drops", "x.jsonl"))


def _sides(recs):
    assert len(recs) == 1
    return recs[0]["chosen"][0]["content"], recs[0]["rejected"][0]["content"]


# --------------------------------------------------------------------------- presets
def test_presets_pick_the_papers_sides(tmp_path):
    cfg, rd, prompts = full_run(tmp_path, n_prompts=3)
    summary = pairs.run(cfg, rd)
    assert set(summary) == set(settings.PRESETS)
    expect = {  # setting -> (chosen model, chosen kind, rejected model, rejected kind)
        "original": ("human", "human_chosen", "human", "human_rejected"),
        "hc_self": ("human", "human_chosen", "tgt", "greedy"),
        "gpt4o_self": ("oracle", "greedy", "tgt", "greedy"),
        "stronger_self": ("big", "greedy", "tgt", "greedy"),
        "peer_rm": ("peer1", "greedy", "peer2", "greedy"),   # rewards 0.3 vs -0.5
        "all_rm": ("oracle", "greedy", "peer2", "greedy"),   # 0.8 is the max, -0.5 the min of the 4 roles
        "self_rm": ("tgt", "sample", "tgt", "sample"),
    }
    for name, (cm, ck, rm, rk) in expect.items():
        recs = read_jsonl(rd.path("pairs", f"{name}.jsonl"))
        assert len(recs) == 3, name
        assert [r["prompt_id"] for r in recs] == sorted(r["prompt_id"] for r in recs)
        for r in recs:
            assert (r["chosen_model"], r["chosen_kind"], r["rejected_model"], r["rejected_kind"]) == (cm, ck, rm, rk), name
            assert r["prompt"] == [{"role": "user", "content": next(t for t in prompts if prompt_id(t) == r["prompt_id"])}]
            assert r["chosen"][0]["role"] == r["rejected"][0]["role"] == "assistant"
    self_rm = read_jsonl(rd.path("pairs", "self_rm.jsonl"))
    assert all(r["chosen_score"] == pytest.approx(0.2) and r["rejected_score"] == 0.0 for r in self_rm)
    assert all(r["margin"] == pytest.approx(0.2) and (r["chosen_seed"], r["rejected_seed"]) == (102, 100)
               for r in self_rm)
    stats = read_json(rd.path("pairs", "stats.json"))
    s = stats["settings"]["peer_rm"]
    assert s["pairs"] == 3 and s["source_mix"] == {"chosen_model": {"peer1": 3}, "rejected_model": {"peer2": 3}}
    assert s["margin"]["mean"] == pytest.approx(0.8)
    assert {"mean", "median", "p10", "p90"} <= set(s["chosen_chars"])
    assert "| self_rm |" in rd.path("pairs", "README.md").read_text()


# --------------------------------------------------------------------------- rules
def test_fixed_prefers_greedy_then_lowest_sample_index(tmp_path):
    recs, _ = _one_prompt(tmp_path, {"chosen": ["big"], "rejected": ["tgt"], "rule": "fixed"}, [
        ("big", "sample", "big s1", 1, 0.0), ("big", "sample", "big s0", 0, 0.0),
        ("tgt", "sample", "tgt s0", 0, 0.0), ("tgt", "greedy", "tgt greedy", None, 0.0)])
    assert _sides(recs) == ("big s0", "tgt greedy")


def test_best_worst_over_one_pool_and_over_two(tmp_path):
    resps = [("tgt", "sample", "a", 0, 0.4), ("tgt", "sample", "b", 1, -1.0), ("tgt", "sample", "c", 2, 2.0),
             ("big", "greedy", "d", None, 5.0), ("big", "sample", "e", 0, -7.0)]
    recs, _ = _one_prompt(tmp_path / "1", {"chosen": ["self"], "rejected": ["self"], "rule": "best_worst"}, resps)
    assert _sides(recs) == ("c", "b")
    # Different pools: argmax over chosen (big), argmin over rejected (self) -- not the global min 'e'.
    recs, _ = _one_prompt(tmp_path / "2", {"chosen": ["stronger"], "rejected": ["self"], "rule": "best_worst"}, resps)
    assert _sides(recs) == ("d", "b")
    assert recs[0]["margin"] == pytest.approx(6.0)


def test_ties_are_broken_by_response_id(tmp_path):
    # pairs.tie_break: id and identical: drop (synthpref's rule; the authors' is in test_authors_pipeline.py)
    resps = [("tgt", "sample", f"t{i}", i, 1.0) for i in range(4)]
    recs, _ = _one_prompt(tmp_path, {"chosen": ["self"], "rejected": ["self"], "rule": "best_worst"}, resps,
                          rules={"tie_break": "id", "identical": "drop"})
    ids = sorted(response(PID, "tgt", "sample", "", i)["response_id"] for i in range(4))
    assert recs[0]["chosen_response_id"] == ids[0] and recs[0]["rejected_response_id"] == ids[1]


def test_max_min_margin_drops_close_pairs(tmp_path):
    spec = {"chosen": ["self"], "rejected": ["self"], "rule": "max_min_margin", "min_margin": 0.5}
    recs, drops = _one_prompt(tmp_path / "1", spec, [("tgt", "sample", "a", 0, 0.3), ("tgt", "sample", "b", 1, 0.0)])
    assert recs == [] and drops[0]["reason"] == "margin_below_min" and drops[0]["prompt_id"] == PID
    recs, _ = _one_prompt(tmp_path / "2", spec, [("tgt", "sample", "a", 0, 0.6), ("tgt", "sample", "b", 1, 0.0)])
    assert _sides(recs) == ("a", "b")


def test_random_is_seeded_and_deterministic(tmp_path):
    resps = [("tgt", "sample", f"t{i}", i, None) for i in range(6)]
    spec = {"chosen": ["self"], "rejected": ["self"], "rule": "random"}
    a = _sides(_one_prompt(tmp_path / "a", spec, resps)[0])
    b = _sides(_one_prompt(tmp_path / "b", spec, resps)[0])
    assert a == b and a[0] != a[1]
    picks = {_sides(_one_prompt(tmp_path / f"s{s}", spec, resps, seed=s)[0]) for s in range(8)}
    assert len(picks) > 1  # the seed matters
    assert all(x["chosen_score"] is None for x in _one_prompt(tmp_path / "c", spec, resps)[0])


def test_length_matched_minimises_length_gap_among_positive_margins(tmp_path):
    spec = {"chosen": ["self"], "rejected": ["self"], "rule": "length_matched"}
    resps = [("tgt", "sample", "x" * 10, 0, 1.0), ("tgt", "sample", "y" * 100, 1, 3.0),
             ("tgt", "sample", "z" * 12, 2, 0.0), ("tgt", "sample", "w" * 70, 3, 5.0)]
    # Best/worst would be (w, z) with a gap of 58 chars; the closest positive pair is (x10, z12).
    recs, _ = _one_prompt(tmp_path / "1", spec, resps)
    assert _sides(recs) == ("x" * 10, "z" * 12)
    spec2 = {"chosen": ["stronger"], "rejected": ["self"], "rule": "length_matched"}
    recs, drops = _one_prompt(tmp_path / "2", spec2, [("big", "greedy", "short", None, 0.0),
                                                      ("tgt", "greedy", "longer one", None, 1.0)])
    assert recs == [] and drops[0]["reason"] == "no_positive_margin"


def test_rm_swap_swaps_when_rm_prefers_rejected(tmp_path):
    resps = [("big", "greedy", "strong answer", None, -1.0), ("tgt", "greedy", "self answer", None, 2.0)]
    base = {"chosen": ["stronger"], "rejected": ["self"], "rule": "fixed"}
    recs, _ = _one_prompt(tmp_path / "1", base, resps)
    assert _sides(recs) == ("strong answer", "self answer") and recs[0]["margin"] == -3.0
    recs, _ = _one_prompt(tmp_path / "2", {**base, "rm_swap": True}, resps)
    assert _sides(recs) == ("self answer", "strong answer") and recs[0]["margin"] == 3.0 and recs[0]["swapped"]
    assert recs[0]["chosen_model"] == "tgt"


# --------------------------------------------------------------------------- drops
def test_drop_reasons(tmp_path):
    spec = {"chosen": ["stronger"], "rejected": ["self"], "chosen_kind": "greedy", "rejected_kind": "greedy",
            "rule": "best_worst"}
    _, d = _one_prompt(tmp_path / "1", spec, [("tgt", "greedy", "self", None, 0.0)])
    assert d[0]["reason"] == "no_chosen_responses"
    _, d = _one_prompt(tmp_path / "2", spec, [("big", "greedy", "big", None, 0.0), ("tgt", "sample", "s", 0, 0.0)])
    assert d[0]["reason"] == "no_rejected_responses"  # only a sample, the side wants greedy
    _, d = _one_prompt(tmp_path / "3", spec, [("big", "greedy", "big", None, None), ("tgt", "greedy", "s", None, 0.0)])
    assert d[0]["reason"] == "missing_score"
    _, d = _one_prompt(tmp_path / "4", spec, [("big", "greedy", "Same text", None, 1.0),
                                               ("tgt", "greedy", "Same text ", None, 0.0)],
                       rules={"identical": "drop"})  # synthpref's rule; the authors keep the pair
    assert d[0]["reason"] == "identical_texts"
    stats = read_json(Path(tmp_path / "4" / "run" / "pairs" / "stats.json"))
    assert stats["settings"]["x"]["dropped"] == {"identical_texts": 1} and stats["settings"]["x"]["pairs"] == 0


def test_fixed_without_scores_keeps_the_pair(tmp_path):
    recs, _ = _one_prompt(tmp_path, {"chosen": ["human_chosen"], "rejected": ["human_rejected"]},
                          [("human", "human_chosen", "no", None, None), ("human", "human_rejected", "yes", None, None)])
    assert _sides(recs) == ("no", "yes") and recs[0]["margin"] is None


def test_dropped_responses_are_skipped(tmp_path):
    cfg = study_config(tmp_path, pairs={"settings": ["self_rm"]})
    rs = [response(PID, "tgt", "sample", t, i) for i, t in enumerate(["good", "bad", "x"])]
    rs[2]["dropped"] = True
    rd = write_run(cfg, [P], rs, {rs[0]["response_id"]: 1.0, rs[1]["response_id"]: 0.0, rs[2]["response_id"]: -5.0})
    pairs.run(cfg, rd)
    assert _sides(read_jsonl(rd.path("pairs", "self_rm.jsonl"))) == ("good", "bad")


# --------------------------------------------------------------------------- config
def test_unknown_setting_sft_and_unknown_source_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'self_rm'"):
        settings.resolve_settings(study_config(tmp_path, pairs={"settings": ["self_rn"]}))
    with pytest.raises(ConfigError, match="'sft' is the untrained baseline"):
        settings.resolve_settings(study_config(tmp_path, pairs={"settings": ["sft", "self_rm"]}))
    bad = {"settings": ["mine"], "custom": {"mine": {"chosen": ["peer"], "rejected": ["self"]}}}
    with pytest.raises(ConfigError, match="did you mean 'peers'"):
        settings.resolve_settings(study_config(tmp_path, pairs=bad))


def test_a_setting_whose_side_no_model_answers_is_refused_before_generation(tmp_path):
    from synthpref.stages import Checks

    def problems(settings_, generate):
        checks = Checks("s.yaml")
        pairs.check(study_config(tmp_path, pairs={"settings": settings_}, generate=generate), checks)
        return checks.problems

    chosen, rejected = problems(["self_rm"], {"overrides": {"tgt": {"num_samples": 0}}})
    assert chosen.startswith("s.yaml: pairs setting 'self_rm': no model on its chosen side (tgt) makes sampled answers")
    assert "its rejected side (tgt)" in rejected
    [p] = problems(["hc_self"], {"sampling": {"greedy": False}})
    assert "'hc_self': no model on its rejected side (tgt) makes greedy answers" in p
    ps = problems(["peer_rm"], {"sources": ["tgt"]})
    assert len(ps) == 2 and "'peer_rm': no model on its chosen side (peer1, peer2)" in ps[0]
    # one member that answers is enough; the peers' samples alone feed Peer+RM ("any")
    assert problems(["peer_rm", "self_rm"], {"overrides": {"peer1": {"num_samples": 0, "greedy": False}}}) == []


def test_custom_setting_and_preset_override_from_config(tmp_path):
    custom = {"peer1_vs_self": {"chosen": ["peer1"], "rejected": ["self"], "rejected_kind": "greedy"},
              "self_rm": {"chosen": ["self"], "rejected": ["self"], "chosen_kind": "sample",
                          "rejected_kind": "sample", "rule": "max_min_margin", "min_margin": 0.15}}
    cfg, rd, _ = full_run(tmp_path, n_prompts=2, pairs={"settings": ["peer1_vs_self", "self_rm"], "custom": custom})
    assert list(settings.resolve_settings(cfg)) == ["peer1_vs_self", "self_rm"]
    pairs.run(cfg, rd)
    recs = read_jsonl(rd.path("pairs", "peer1_vs_self.jsonl"))
    assert [(r["chosen_model"], r["rejected_model"]) for r in recs] == [("peer1", "tgt")] * 2
    stats = read_json(rd.path("pairs", "stats.json"))
    assert stats["settings"]["self_rm"]["dropped"] == {}  # margin 0.2 >= 0.15
    assert not rd.path("pairs", "original.jsonl").exists()
    assert settings.models_needed(cfg) == ["peer1", "tgt"]


def test_missing_reward_scores_is_a_data_error(tmp_path):
    cfg, rd, _ = full_run(tmp_path, n_prompts=1)
    rd.path("score", "rm.jsonl").unlink()
    with pytest.raises(DataError, match="synthpref score"):
        pairs.run(cfg, rd)


def test_same_inputs_give_identical_bytes(tmp_path):
    outs = []
    for sub in ("a", "b"):
        cfg, rd, _ = full_run(tmp_path / sub, n_prompts=4)
        pairs.run(cfg, rd)
        pairs.run(cfg, rd)  # a re-run over its own outputs changes nothing
        outs.append({p.relative_to(rd.root).as_posix(): p.read_bytes()
                     for p in sorted(rd.path("pairs").rglob("*.jsonl"))} | {"stats": rd.path("pairs", "stats.json").read_bytes()})
    assert outs[0] == outs[1]
    json.loads(outs[0]["stats"])
    # the card is written when asked for, and an earlier one is retired when it no longer is
    assert rd.path("pairs", "README.md").exists()
    pairs.run(cfg.model_copy(update={"pairs": cfg.pairs.model_copy(update={"card": False})}), rd)
    assert not rd.path("pairs", "README.md").exists()


def test_push_to_hub_only_when_configured(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(pairs, "push_to_hub", lambda rd, repo, settings, private: calls.append((repo, settings, private)))
    cfg, rd, _ = full_run(tmp_path / "a", n_prompts=1, pairs={"settings": ["original"]})
    pairs.run(cfg, rd)
    assert calls == []
    cfg, rd, _ = full_run(tmp_path / "b", n_prompts=1, pairs={"settings": ["original"], "push_to_hub": "me/pairs"})
    pairs.run(cfg, rd)
    assert calls == [("me/pairs", ["original"], True)]
