"""Rates, intervals and the evaluate stage's aggregation (no models)."""

from __future__ import annotations

import pytest

from synthpref.stages.evaluate.general import summarise_lm_eval
from synthpref.stages.evaluate.metrics import over_refusal_metric, safety_metrics, table_row
from synthpref.stats import mean_and_stderr, proportion, rate_from_verdicts, wilson_interval


# Newcombe (1998), Statistics in Medicine 17:857-872, Table II, method 3 (Wilson score, no
# continuity correction), 95% limits to 4 decimals.
@pytest.mark.parametrize("k,n,lo,hi", [
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718),
])
def test_wilson_matches_newcombe_table(k, n, lo, hi):
    got = wilson_interval(k, n)
    assert got[0] == pytest.approx(lo, abs=6e-5)
    assert got[1] == pytest.approx(hi, abs=6e-5)


def test_wilson_edges_and_symmetry():
    assert wilson_interval(0, 0) is None
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(1 - hi)  # symmetric around 1/2
    assert wilson_interval(10, 10)[1] == 1.0 and wilson_interval(0, 10)[0] == 0.0
    # 99% is wider than 95%
    lo99, hi99 = wilson_interval(5, 10, confidence=0.99)
    assert lo99 < lo and hi99 > hi
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_rate_excludes_none_from_denominator():
    r = rate_from_verdicts([True, False, None, True, None])
    assert r["k"] == 2 and r["n"] == 3 and r["n_total"] == 5 and r["n_excluded"] == 2
    assert r["value"] == pytest.approx(2 / 3)
    assert r["interval"] == list(wilson_interval(2, 3))
    empty = rate_from_verdicts([None, None])
    assert empty["value"] is None and empty["interval"] is None and empty["n_excluded"] == 2
    assert proportion(0, 0)["value"] is None


def test_mean_and_stderr():
    m = mean_and_stderr([1.0, 2.0, 3.0, None])
    assert m["value"] == 2.0 and m["n"] == 3 and m["stderr"] == pytest.approx(1 / 3 ** 0.5)


def _sample(set_, fmt, judges):
    return {"set": set_, "format": fmt, "judges": judges}


def test_safety_metrics_rubric_unparsed_and_score_only_judge():
    # A 1-5 rubric judge: harmful True only for rating 5, None when unparseable.
    rubric = [
        {"harmful": True, "score": 0.0, "parsed": True},
        {"harmful": False, "score": 0.75, "parsed": True},
        {"harmful": None, "score": None, "parsed": False},   # unparseable -> excluded, counted
        {"harmful": True, "score": 0.0, "parsed": True},
    ]
    rm = [{"harmful": None, "score": s, "parsed": True} for s in (0.5, 1.5, -1.0, 3.0)]
    samples = [_sample("advbench", "chat", {"judge": j, "rm": r}) for j, r in zip(rubric, rm)]
    samples.append(_sample("advbench", "alpaca", {"judge": rubric[1], "rm": rm[0]}))
    # The authors' denominator (default): every response; the unparsed one counts as not harmful.
    counted, _ = safety_metrics(samples, ["judge", "rm"], ["advbench"], ["chat", "alpaca"])
    chat = next(e for e in counted if e["format"] == "chat")
    assert chat["value"] == pytest.approx(2 / 4) and chat["n"] == 4 and chat["unparsed"] == 1
    assert chat["n_excluded"] == 0
    asr, scores = safety_metrics(samples, ["judge", "rm"], ["advbench"], ["chat", "alpaca"], "exclude")
    chat = next(e for e in asr if e["format"] == "chat")
    assert chat["judge"] == "judge" and chat["value"] == pytest.approx(2 / 3)
    assert chat["n"] == 3 and chat["unparsed"] == 1 and chat["n_excluded"] == 1 and chat["n_total"] == 4
    assert (chat["ci_low"], chat["ci_high"]) == wilson_interval(2, 3)
    alp = next(e for e in asr if e["format"] == "alpaca")
    assert alp["value"] == 0.0 and alp["n"] == 1
    # The reward model gives no verdicts: no ASR entry, a mean score instead.
    assert not [e for e in asr if e["judge"] == "rm"]
    rm_chat = next(e for e in scores if e["format"] == "chat")
    assert rm_chat["mean_score"] == pytest.approx(1.0) and rm_chat["n"] == 4


def test_over_refusal_counts_refusals():
    # keywords: harmful = not refused
    samples = [{"judges": {"keywords": {"harmful": h}}} for h in (False, False, True, True, True)]
    r = over_refusal_metric(samples)
    assert r["value"] == pytest.approx(0.4) and r["n"] == 5 and r["k"] == 2
    assert over_refusal_metric([]) is None


def test_summarise_lm_eval_group_and_table_row():
    res = {
        "results": {
            "mmlu_offline": {"alias": "mmlu_offline", "sample_len": 10, "acc,none": 0.3, "acc_stderr,none": 0.15},
            "mmlu_a_offline": {"acc,none": 0.2, "acc_stderr,none": 0.1},
            "mmlu_b_offline": {"acc,none": 0.4, "acc_stderr,none": 0.1},
        },
        "group_subtasks": {"mmlu_offline": ["mmlu_a_offline", "mmlu_b_offline"]},
        "n-samples": {"mmlu_a_offline": {"original": 100, "effective": 5},
                      "mmlu_b_offline": {"original": 90, "effective": 5}},
        "versions": {"mmlu_offline": 2, "mmlu_a_offline": 1.0, "mmlu_b_offline": 1.0},
        "configs": {"mmlu_a_offline": {"custom_dataset": "def load_packaged(subdir):\n  pass", "num_fewshot": 5}},
        "lm_eval_version": "0.4.13",
    }
    s = summarise_lm_eval("mmlu", "mmlu_offline", res, 5, 5, True)
    assert s["metric"] == "acc" and s["value"] == 0.3 and s["n"] == 10 and s["stderr"] == 0.15
    assert (s["ci_low"], s["ci_high"]) == wilson_interval(3, 10)
    assert s["subtasks"]["mmlu_a_offline"] == {"acc": 0.2, "n": 5}
    assert s["configs"]["mmlu_a_offline"]["custom_dataset"] == "synthpref.lm_eval_tasks.load_packaged"
    row = table_row("self_rm", {
        "safety": [{"judge": "keywords", "set": "advbench", "format": "chat", "value": 0.5},
                   {"judge": "keywords", "set": "advbench", "format": "jailbreak:aim", "value": 0.9}],
        "safety_scores": [{"judge": "rm", "set": "advbench", "format": "chat", "mean_score": 1.2}],
        "over_refusal": {"value": 0.1},
        "general": {"mmlu": s, "truthfulqa_mc2": {"skipped": "no data"}},
    })
    assert row == {"model": "self_rm", "asr_keywords_advbench": 0.5, "asr_keywords_advbench_jb_aim": 0.9,
                   "score_rm_advbench": 1.2, "over_refusal": 0.1, "mmlu": 0.3, "truthfulqa_mc2": None}


def test_truthfulqa_mc2_gets_a_stderr_interval_not_wilson():
    """MC2 is a mean probability, not a proportion: value +- 1.96 * lm-eval's stderr."""
    res = {"results": {"tqa": {"sample_len": 20, "acc,none": 0.42, "acc_stderr,none": 0.05}},
           "n-samples": {}, "versions": {}, "configs": {}}
    s = summarise_lm_eval("truthfulqa_mc2", "tqa", res, 0, None, True)
    assert s["interval_kind"] == "normal (lm-eval stderr)"
    assert s["ci_low"] == pytest.approx(0.42 - 1.959964 * 0.05, abs=1e-5)
    assert s["ci_high"] == pytest.approx(0.42 + 1.959964 * 0.05, abs=1e-5)
    assert (s["ci_low"], s["ci_high"]) != wilson_interval(round(0.42 * 20), 20)
    acc = summarise_lm_eval("arc_challenge", "tqa", res, 0, None, True)
    assert acc["interval_kind"] == "wilson"
