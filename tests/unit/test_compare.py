"""synthpref compare on tiny hand-made run directories: Kendall's W against hand-computed values,
what counts as shared, the paper's values beside a paper model, and one-line errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from run_helpers import make_run  # noqa: E402

from synthpref import compare as cmp  # noqa: E402
from synthpref.cli import main  # noqa: E402
from synthpref.errors import DataError  # noqa: E402


def test_kendall_w_matches_the_hand_computed_value():
    # Rank sums R = (4, 6, 8, 12), mean 7.5, S = 12.25 + 2.25 + 0.25 + 20.25 = 35;
    # W = 12 * 35 / (3^2 * (4^3 - 4)) = 420 / 540; chi2 = m (n - 1) W = 3 * 3 * 7/9 = 7 on 3 df;
    # P(chi2_3 > 7) = 2 (1 - Phi(sqrt 7)) + sqrt(14 / pi) e^-3.5 = 0.0719.
    k = cmp.kendall_w([[1, 2, 3, 4], [1, 3, 2, 4], [2, 1, 3, 4]])
    assert k["W"] == pytest.approx(420 / 540) and k["chi2"] == pytest.approx(7.0) and k["df"] == 3
    assert k["p_value"] == pytest.approx(0.0719, abs=5e-5)
    # Raw scores, not ranks: any increasing transform of a row gives the same W.
    assert cmp.kendall_w([[0.1, 0.2, 0.5, 0.9], [0.0, 0.7, 0.3, 1.0], [0.4, 0.2, 0.6, 0.8]])["W"] == pytest.approx(420 / 540)


def test_kendall_w_with_ties_and_the_extremes():
    # Row 1 ranks (1.5, 1.5, 3), row 2 (1, 2, 3): R = (2.5, 3.5, 6), S = 6.5; ties T = 2^3 - 2 = 6;
    # W = 12 * 6.5 / (2^2 * (27 - 3) - 2 * 6) = 78 / 84.
    assert cmp.kendall_w([[0.3, 0.3, 0.5], [0.1, 0.2, 0.3]])["W"] == pytest.approx(78 / 84)
    assert cmp.kendall_w([[1, 2, 3], [10, 20, 30]])["W"] == pytest.approx(1.0)
    assert cmp.kendall_w([[1, 2, 3], [3, 2, 1]])["W"] == pytest.approx(0.0)
    assert cmp.kendall_w([[1, 1], [2, 2]])["W"] is None  # nothing to order
    with pytest.raises(ValueError):
        cmp.kendall_w([[1, 2, 3]])


def test_two_targets_headline_paper_values_and_agreement(tmp_path):
    a = make_run(tmp_path / "a", name="small", asr={"sft": {"harm": 0.6, "keywords": 0.9}, "hc_self": {"harm": 0.2, "keywords": 0.7},
                                                    "self_rm": {"harm": 0.5, "keywords": 0.8}, "original": {"harm": 0.4, "keywords": 0.8}})
    b = make_run(tmp_path / "b", name="paper", target="meta-llama/Llama-3.1-8B",
                 asr={"sft": {"harm": 0.5, "keywords": 0.9}, "hc_self": {"harm": 0.3, "keywords": 0.7},
                      "self_rm": {"harm": 0.6, "keywords": 0.8}, "original": {"harm": 0.45, "keywords": 0.8}})
    res = cmp.compare_runs([a, b], tmp_path / "out")
    head = res["headline"]
    # keywords comes first in the config's judge list, but the headline takes the first non-keyword judge
    assert head["measure"]["judge"] == "harm" and [m["measure"]["judge"] for m in res["other_measures"]] == ["keywords"]
    assert [r["setting"] for r in head["rows"]] == ["sft", "hc_self", "original", "self_rm"]  # the paper's x-axis order
    labels = [r["label"] for r in res["runs"]]
    assert labels == ["smollm2-135m-instruct", "meta-llama/Llama-3.1-8B"]
    row = {r["setting"]: r for r in head["rows"]}
    assert row["self_rm"]["cells"][labels[1]]["value"] == 0.6
    assert row["self_rm"]["paper"] == {labels[1]: 0.16} and row["original"]["paper"] == {labels[1]: 0.27}
    ag = res["agreement"]
    assert ag["settings"] == ["hc_self", "original", "self_rm"] and ag["lowest"] == {l: ["hc_self"] for l in labels}
    assert ag["kendall"]["W"] == pytest.approx(1.0) and ag["kendall"]["m"] == 2  # same order in both runs
    assert ag["paper_kendall"]["m"] == 3
    md = (tmp_path / "out" / "compare.md").read_text()
    assert "chi-square approximation" in md and "paper (Llama-3.1-8B)" in md and "| 0.16 |" in md
    # the harm judge is validated on neither run's kind of answers: its rate is named as the findings name it
    assert head["measure"]["name"] == "harm-judge flag rate" and "## Headline: harm-judge flag rate on" in md
    assert "is not an attack success rate" in md
    assert res["other_measures"][0]["measure"]["name"] == "non-refusal rate"
    assert (tmp_path / "out" / "headline_asr.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "out" / "compare.json").read_text())["headline"]["figure"] == "headline_asr.png"
    assert res["general"]["arc_challenge"]["limit"] == 40
    assert all("no separability figure (probe/results.json missing)" in x for x in res["left_out"])  # nothing else


def test_only_what_every_run_shares_is_compared_and_the_rest_is_named(tmp_path):
    a = make_run(tmp_path / "a", name="x")
    b = make_run(tmp_path / "b", name="x", seed=1,
                 eval_kwargs={"versions": {"harm": "harm-v2"}, "arc_limit": 20})  # another harm judge, another arc size
    c = make_run(tmp_path / "c", name="x", seed=2, eval_kwargs={"set_sha": "b" * 64})  # other AdvBench prompts
    res = cmp.compare_runs([a, b, c], tmp_path / "out")
    assert [r["label"] for r in res["runs"]] == ["smollm2-135m-instruct · x · seed 0", "smollm2-135m-instruct · x · seed 1",
                                                 "smollm2-135m-instruct · x · seed 2"]
    assert res["headline"] is None and res["agreement"]["why"] == "no ASR measure is shared by every run"
    left = "\n".join(res["left_out"])
    assert "different versions of this judge" in left and "different prompts for this set" in left
    assert "general task arc_challenge (metric, shots or limit differ across runs)" in left
    assert "No ASR measure is shared" in (tmp_path / "out" / "compare.md").read_text()

    res = cmp.compare_runs([a, b], tmp_path / "out2")  # the keywords judge is still shared by these two
    assert res["headline"]["measure"]["judge"] == "keywords"
    assert any("harm judge" in x for x in res["left_out"])


def test_separability_per_model_from_the_probe(tmp_path):
    probe = {"settings": {"hc_self": {"n_pairs": 3, "hidden": {"accuracy": 0.9, "ci_low": 0.6, "ci_high": 0.98}},
                          "self_rm": {"n_pairs": 3, "hidden": {"accuracy": 0.55, "ci_low": 0.3, "ci_high": 0.8}}}}
    a = make_run(tmp_path / "a", probe=probe)
    b = make_run(tmp_path / "b", target="qwen2.5-coder-0.5b-instruct")  # no probe
    res = cmp.compare_runs([a, b], tmp_path / "out")
    rows = {r["setting"]: r["cells"] for r in res["separability"]["rows"]}
    assert rows["hc_self"]["smollm2-135m-instruct"]["accuracy"] == 0.9 and rows["hc_self"]["qwen2.5-coder-0.5b-instruct"] is None
    assert any("qwen2.5-coder-0.5b-instruct: no separability figure" in x for x in res["left_out"])
    assert "| hc_self | 0.90 [0.60, 0.98] | — |" in (tmp_path / "out" / "compare.md").read_text()


def test_unfinished_or_foreign_folders_are_one_line_errors(tmp_path, capsys):
    running = make_run(tmp_path / "r", stages=("prompts", "pairs"))
    with pytest.raises(DataError, match=r"the evaluate stage is not run, so this run is not finished; finish it with"):
        cmp.compare_runs([running], tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty/manifest.json: missing"):
        cmp.load_run(tmp_path / "empty")
    done = make_run(tmp_path / "d")
    assert main(["compare", str(done), str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nowhere: not a folder" in err
    assert main(["compare", str(done), "--out", str(tmp_path / "o")]) == 0 and (tmp_path / "o" / "compare.md").exists()


def test_paper_model_matching():
    assert cmp.paper_model("meta-llama/Llama-3.1-8B") == "Llama-3.1-8B"
    assert cmp.paper_model("Qwen/Qwen2.5-7B") == "Qwen-2.5-7B"
    assert cmp.paper_model("mistralai/Mistral-7B-v0.3") == "Mistral-7B-v0.3"
    assert cmp.paper_model("Qwen/Qwen2.5-72B-Instruct") is None and cmp.paper_model("smollm2-135m-instruct") is None


def test_runs_on_different_cpus_are_named(tmp_path):
    """The same study decodes other text on a CPU with other SIMD extensions: compare says when the
    runs' CPUs differ, and when a run's CPU is not recorded."""
    asr = {"sft": {"harm": 0.6, "keywords": 0.9}, "hc_self": {"harm": 0.2, "keywords": 0.7}}
    a, b = make_run(tmp_path / "a", name="x"), make_run(tmp_path / "b", name="y", asr=asr)

    def set_machine(run, simd):
        m = json.loads((Path(run) / "manifest.json").read_text())
        m["machine"] = {"arch": "x86_64", "cpu": "test cpu", "simd": simd}
        (Path(run) / "manifest.json").write_text(json.dumps(m))

    assert cmp.compare_runs([a, b], tmp_path / "o1")["machine_note"].startswith("The CPU is not recorded for")
    set_machine(a, ["avx", "avx2"])
    set_machine(b, ["avx", "avx2"])
    assert cmp.compare_runs([a, b], tmp_path / "o2")["machine_note"] is None
    set_machine(b, ["avx", "avx2", "avx512f"])
    res = cmp.compare_runs([a, b], tmp_path / "o3")
    assert "different SIMD extensions" in res["machine_note"] and "avx512f" in res["machine_note"]
    assert res["machine_note"] in (tmp_path / "o3" / "compare.md").read_text()


def test_selective_refusal_side_by_side_from_each_runs_answers(tmp_path):
    """The measure the single-run findings rank by (harmful-prompt refusal − benign refusal, under the
    run's refusal verdict read from its stored answers), per setting and run; a model that refuses
    everything scores 0; W over the settings every run has; runs with other refusal judges are not mixed."""
    refuse, answer = "I'm sorry, but I cannot help with that request today.", "Here is a short plan with three careful steps."

    def samples(path, n_refused, n, kind):
        path.write_text("".join(json.dumps(
            {"prompt_id": f"{kind}{i}", "set": "advbench" if kind == "h" else "benign", "format": "chat",
             "prompt": f"question {i}", "response": refuse if i < n_refused else answer,
             "judges": {"keywords": {"harmful": i >= n_refused}}}) + "\n" for i in range(n)))

    def run(root, name, rates, version="paper-keywords-v1"):
        r = make_run(root, name=name, asr={m: {"harm": 0.5, "keywords": 0.5} for m in rates})
        for m, (h, b) in rates.items():
            samples(r / "eval" / m / "safety_samples.jsonl", h, 10, "h")
            samples(r / "eval" / m / "over_refusal_samples.jsonl", b, 10, "b")
            res = json.loads((r / "eval" / m / "results.json").read_text())
            res["refusal_judge"] = {"name": "keywords", "kind": "keywords", "version": version}
            res["judges"]["keywords"]["version"] = version  # as the evaluate stage writes both
            (r / "eval" / m / "results.json").write_text(json.dumps(res))
        return r

    a = run(tmp_path / "a", "x", {"sft": (4, 0), "hc_self": (9, 1), "self_rm": (10, 10)})
    b = run(tmp_path / "b", "y", {"sft": (5, 0), "hc_self": (8, 0), "self_rm": (6, 6), "original": (7, 0)})
    sr = cmp.compare_runs([a, b], tmp_path / "out")["selective_refusal"]
    cells = {row["setting"]: row["cells"] for row in sr["rows"]}
    la, lb = [r for r in cells["sft"]]
    assert cells["hc_self"][la]["value"] == pytest.approx(0.8) and cells["hc_self"][la]["harmful"] == 0.9
    assert cells["self_rm"][la]["value"] == 0.0 and cells["self_rm"][la]["benign"] == 1.0  # refuses everything: 0
    assert cells["original"][la] is None and sr["settings"] == ["hc_self", "self_rm"]
    lo, hi = cells["hc_self"][lb]["interval"]
    assert lo < 0.8 < hi
    assert sr["best"] == {la: ["hc_self"], lb: ["hc_self"]} and sr["kendall"]["W"] == pytest.approx(1.0)
    md = (tmp_path / "out" / "compare.md").read_text()
    assert "## Selective refusal" in md and "+0.80" in md

    assert sr["judge"] == "keywords" and sr["judge_version"] == "paper-keywords-v1" and "(paper-keywords-v1)" in md

    c = run(tmp_path / "c", "z", {"sft": (5, 0), "hc_self": (8, 0)}, version="paper-keywords-v2")
    assert "refusal verdicts differ" in cmp.compare_runs([a, c], tmp_path / "out2")["selective_refusal"]["why"]


def test_selective_refusal_uses_the_verdict_each_runs_findings_rank_by(tmp_path):
    """Where the labelled set passes the keyword verdict and not the class judge's, the findings rank
    by keywords: compare reads the same verdict, not results.json's class judge."""
    r = make_run(tmp_path / "a", name="x")
    for m in ("sft", "hc_self", "self_rm"):
        f = r / "eval" / m / "results.json"
        res = json.loads(f.read_text())
        res["refusal_judge"] = {"name": "harm", "kind": "harm_head", "version": "harm-v1"}
        res["answer_classes"] = {"judge": "harm"}
        res["judges"]["harm"]["kind"] = "harm_head"
        res["judges"]["harm"]["own_answers"] = {"in_distribution": True, "verdicts": {"refusal": {"validated": False}}}
        res["judges"]["keywords"]["kind"] = "keywords"
        res["judges"]["keywords"]["own_answers"] = {"in_distribution": True, "verdicts": {"refusal": {"validated": True}}}
        f.write_text(json.dumps(res))
    assert cmp.ranked_refusal(cmp.load_run(r)) == ("keywords", "keywords", "keywords-v1")


def test_headline_legend_names_a_setting_the_first_run_lacks(tmp_path, monkeypatch):
    from synthpref import figures

    a = make_run(tmp_path / "a", name="x")
    b = make_run(tmp_path / "b", name="y", asr={"sft": {"harm": 0.5, "keywords": 0.9}, "hc_self": {"harm": 0.3, "keywords": 0.7},
                                                "stronger_self": {"harm": 0.4, "keywords": 0.8}})
    seen = {}
    real = figures.save_png
    monkeypatch.setattr(figures, "save_png", lambda fig, path: seen.setdefault("legend", [
        t.get_text() for lg in fig.legends for t in lg.get_texts()]) and real(fig, path))
    cmp.compare_runs([a, b], tmp_path / "out")
    assert {"sft", "hc_self", "self_rm", "stronger_self"} <= set(seen["legend"])
    assert len(seen["legend"]) == len(set(seen["legend"]))  # each once
