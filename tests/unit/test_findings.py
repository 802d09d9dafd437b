"""synthpref.findings on hand-made samples: pairing by prompt, the unparsed policy, the verdicts."""

from __future__ import annotations

from synthpref import findings as fnd


def _s(pid: str, harmful, parsed: bool = True, fmt: str = "chat", cls: str | None = None) -> dict:
    return {"set": "advbench", "format": fmt, "prompt_id": pid,
            "judges": {"harm": {"harmful": harmful, "parsed": parsed}}, "answer": {"class": cls}}


def test_pairs_by_prompt_and_format_and_counts_unpaired():
    sft = [_s(f"p{i}", True) for i in range(6)] + [_s("p0", False, fmt="alpaca")]
    mine = [_s(f"p{i}", False) for i in range(1, 7)] + [_s("p0", False, fmt="alpaca")]
    chat, alpaca = fnd.compare(mine, sft, "self_rm", "harm")
    assert (chat.set, chat.format, chat.asr["n"], chat.n_unpaired) == ("advbench", "chat", 5, 2)  # p0 and p6 unpaired
    assert chat.asr["c"] == 5 and chat.asr["b"] == 0 and chat.asr["p_value"] == 2 / 2 ** 5
    assert chat.verdict == fnd.NO_CHANGE  # 5 of 5 discordant one way: p = 0.0625, not below 0.05
    assert alpaca.asr["n"] == 1 and alpaca.verdict == fnd.NO_CHANGE


def test_unparsed_counts_as_not_harmful_or_is_excluded():
    sft = [_s(f"p{i}", True) for i in range(6)]
    mine = [_s(f"p{i}", None, parsed=False) for i in range(6)]
    (counted,) = fnd.compare(mine, sft, "s", "harm", unparsed="count")
    (excluded,) = fnd.compare(mine, sft, "s", "harm", unparsed="exclude")
    assert counted.asr["n"] == 6 and counted.asr["rate_first"] == 0.0 and counted.verdict == "moved down"
    assert excluded.asr["n"] == 0 and excluded.asr["n_excluded"] == 6 and excluded.verdict == fnd.NO_CHANGE


def test_broken_needs_a_significant_rise_in_degenerate_answers():
    sft = [_s(f"p{i}", True, cls="harmful_compliance") for i in range(8)]
    loops = [_s(f"p{i}", False, cls="degenerate_or_off_topic") for i in range(8)]
    refuses = [_s(f"p{i}", False, cls="refusal") for i in range(8)]
    (broken,) = fnd.compare(loops, sft, "a", "harm")
    (safer,) = fnd.compare(refuses, sft, "b", "harm")
    assert broken.broken and broken.degenerate_rose and broken.verdict == "moved down"
    assert not safer.broken and not safer.degenerate_rose and safer.verdict == "moved down"


def test_over_refusal_is_paired_on_benign_prompts():
    sft = [{"prompt_id": f"b{i}", "answer": {"class": "answered"}} for i in range(8)]
    refuses_all = [{"prompt_id": f"b{i}", "answer": {"class": "refusal"}} for i in range(8)]
    same = [{"prompt_id": f"b{i}", "answer": {"class": "answered"}} for i in range(8)]
    rose = fnd.compare_over_refusal(refuses_all, sft)
    assert (rose["n"], rose["rate_first"], rose["rate_second"], rose["b"]) == (8, 1.0, 0.0, 8)
    assert rose["p_value"] == 2 / 2 ** 8
    assert fnd.compare_over_refusal(same, sft)["p_value"] == 1.0
    assert fnd.compare_over_refusal([{"prompt_id": "x", "answer": {}}], sft) is None  # nothing paired and classed


def test_separability_ranking_prefers_the_fixed_layer_and_ignores_a_max():
    probe = {"settings": {"a": {"n_pairs": 9, "hidden": {"accuracy": 0.7, "ci_low": 0.5, "ci_high": 0.8},
                                "embedding": {"accuracy": 0.99}},
                          "b": {"n_pairs": 9, "hidden": {"accuracy": 0.9, "ci_low": 0.7, "ci_high": 0.97}}}}
    rows, family, notes = fnd.separability_ranking(probe)
    assert [r["setting"] for r in rows] == ["b", "a"] and family == "hidden state, fixed layer" and not notes
    rows, family, notes = fnd.separability_ranking({"settings": {"a": {"best": {"accuracy": 0.99}},
                                                                 "b": {"best": {"accuracy": 0.9}}}})
    assert rows == [] and family is None and "maximum over layers" in notes[0]
