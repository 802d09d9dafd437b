"""Report stage on synthetic results: every eval set x judge x format reaches the tables and the
figures; intervals are shown only where they belong; API refusals are counted."""

from __future__ import annotations

import pytest

from synthpref.config import parse_config
from synthpref.rundir import RunDir, write_json
from synthpref.stages import report

SETS, JUDGES, FORMATS = ["advbench", "harmbench"], ["keywords", "rm"], ["chat", "jailbreak:aim"]


def _entry(s, j, f, v):
    return {"set": s, "judge": j, "format": f, "value": v, "ci_low": max(v - 0.1, 0), "ci_high": min(v + 0.1, 1),
            "n": 10, "unparsed": 0}


@pytest.fixture
def run(tmp_path):
    cfg = parse_config({"name": "rep", "run_dir": str(tmp_path / "run"), "models": {"m": {"path": "smollm2-135m-instruct"}},
                        "target": "m", "prompts": {"train": {"source": "advbench"}},
                        "pairs": {"settings": ["original", "self_rm"]}})
    rd = RunDir(cfg.run_path).create()
    for k, m in enumerate(["sft", "original", "self_rm"]):
        safety = [_entry(s, j, f, round(0.1 * (k + 1) + 0.05 * i, 2))
                  for i, (s, j, f) in enumerate((s, j, f) for s in SETS for j in JUDGES for f in FORMATS)]
        general = {"arc_challenge": {"value": 0.5, "ci_low": 0.3, "ci_high": 0.7, "interval_kind": "wilson"},
                   "truthfulqa_mc2": {"value": 0.4, "ci_low": 0.302, "ci_high": 0.498,
                                      "interval_kind": "normal (lm-eval stderr)"}}
        write_json(rd.path("eval", m, "results.json"), {"model": m, "safety": safety, "general": general})
    write_json(rd.path("probe", "results.json"), {"settings": {"original": {"best": {"accuracy": 0.9}},
                                                               "self_rm": {"best": {"accuracy": 0.6}}}})
    write_json(rd.path("generate", "stats.json"), {"models": {"m": {"generated": 12, "dropped": 3, "refused_by_api": 2}}})
    return cfg, rd


def test_every_set_judge_format_in_tables_and_figures(run):
    cfg, rd = run
    summary = report.run(cfg, rd)
    md = rd.path("report", "report.md").read_text()
    figs = set(summary["figures"])
    for s in SETS:
        for j in JUDGES:
            assert f"asr_{s}_{j}.png" in figs and rd.path("report", f"asr_{s}_{j}.png").stat().st_size > 1000
            for f in FORMATS:
                assert f"| self_rm | self-generated | {s} | {f} | {j} |" in md
    for j in JUDGES:
        assert f"separability_vs_asr_{j}.png" in figs
    assert "0.400 [0.30, 0.50]" in md and "truthfulqa_mc2: normal (lm-eval stderr) interval" in md
    assert "| m | 12 | 3 | 2 |" in md  # API refusals counted


def test_report_is_reproducible(run):
    cfg, rd = run
    report.run(cfg, rd)
    first = {p.name: p.read_bytes() for p in rd.path("report").iterdir()}
    report.run(cfg, rd)
    assert {p.name: p.read_bytes() for p in rd.path("report").iterdir()} == first
