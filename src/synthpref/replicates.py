"""Across seeds: what a `seeds` study's replicates say together (<run>/seeds/report.md, seeds.json).

Each seed's run directory has its own report, with every trained setting compared to `sft` on the
same prompts (synthpref.findings). This module reads those comparisons back from each seed's
per-prompt verdicts (eval/<model>/safety_samples.jsonl and over_refusal_samples.jsonl, through
`findings.paired_findings`, so the numbers are the per-seed reports' own) and adds, per setting
and measure (harmful-prompt refusal, benign refusal, the keyword judge's non-refusal rate, the
primary harm judge's rate):

- the setting's rate in each seed, and the across-seed spread (mean, sample sd, min-max);
- a pooled paired test across seeds that counts a prompt once: the **prompt-clustered sign-flip
  test**. Within a seed, setting and sft answer the same prompts; a prompt's pairs in different
  seeds share the SFT answer, so they are not independent draws. Each prompt's differences
  (setting minus sft, -1/0/+1 per seed) are summed into d_i, and the two-sided p counts the sign
  vectors whose sum is at least as far from 0 as the observed one (stats.signflip_exact; Fisher's
  randomization test, exact under symmetry of each d_i). With one seed it is the exact McNemar
  test. With several, the shared SFT answer makes d_i not quite symmetric under equal rates, so the
  test is approximate: simulated at 100 prompts x 3 seeds with nothing changed, it rejected at 5%
  in 3.3-4.6% of runs (`tools/signflip_size.py`). The summed discordant pairs B (only the setting)
  and C (only sft) are shown beside it. (An earlier version used the stratified exact McNemar
  test, which treats every discordant pair as independent; in the same simulation it rejected in
  11-16% of runs.)
- the p-values of all pooled tests are one family, adjusted with Holm's step-down (stats.holm);
  a pooled verdict reads the adjusted p at the 5% level;
- "moved in k of n seeds": k = the seeds whose own test (its report's verdict: Holm over that
  seed's family, 5% level) moved in the pooled direction (the sign of B - C).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from . import findings as fnd
from .config import StudyConfig
from .figures import paper_order
from .rundir import RunDir, read_json, write_json, write_text
from .stats import holm, signflip_exact

BENIGN = "benign refusal"
REFUSAL = "harmful-prompt refusal"
NON_REFUSAL = "non-refusal rate"
TEST_NAME = ("prompt-clustered exact sign-flip test (each prompt's setting-minus-sft differences summed over "
             "seeds, its sign flipped as one unit under the null; Fisher's randomization test, exact under "
             "symmetry, approximate with a shared SFT answer: tools/signflip_size.py)")


# --------------------------------------------------------------------------- statistics
def pooled_test(tables: list[dict]) -> dict:
    """The prompt-clustered sign-flip test over per-seed paired tables (findings.keyed_rates dicts:
    b = only the first model, c = only the second, by_prompt = prompt -> first - second): each
    prompt's differences summed over seeds, the exact two-sided p on those sums
    (stats.signflip_exact), summed b and c, and the pooled difference (B - C) / N over all N pairs."""
    b = sum(t["b"] for t in tables)
    c = sum(t["c"] for t in tables)
    n = sum(t["n"] for t in tables)
    per_prompt: dict[str, int] = {}
    for t in tables:
        for k, d in t["by_prompt"].items():
            per_prompt[k] = per_prompt.get(k, 0) + d
    return {"b": b, "c": c, "n": n, "strata": len(tables), "prompts": len(per_prompt),
            "prompts_changed": sum(1 for d in per_prompt.values() if d), "p_value": signflip_exact(list(per_prompt.values())),
            "difference": (b - c) / n if n else None}


def spread(values: list[float]) -> dict:
    """Mean, sample standard deviation (None for one value), min and max."""
    if not values:
        return {"mean": None, "sd": None, "min": None, "max": None}
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
    return {"mean": mean, "sd": sd, "min": min(values), "max": max(values)}


def direction(difference: float | None) -> str | None:
    if not difference:
        return None
    return "moved down" if difference < 0 else "moved up"


# --------------------------------------------------------------------------- reading each seed
def load_evals(rd: RunDir) -> dict[str, dict]:
    return {f.parent.name: read_json(f) for f in sorted(rd.path("eval").glob("*/results.json"))}


def seed_tests(cfg: StudyConfig, rd: RunDir) -> tuple[dict[tuple[str, str, str], dict], str]:
    """{(setting, measure, where): paired test of the setting vs sft} of one seed's run, as its own
    report computes them (Holm over its family), and the name of the harm judge's measure."""
    evals = load_evals(rd)
    f = fnd.paired_findings(cfg, rd, evals, [s for s in paper_order(evals) if s != fnd.SFT])
    validated = bool(f.judge) and fnd.validated_in_distribution(evals, f.judge)
    harm = fnd.measure_name(f.judge_kind, validated)
    out: dict[tuple[str, str, str], dict] = {}
    for c in f.comparisons:
        where = f"{c.set}/{c.format}"
        for measure, r in ((REFUSAL, c.refusal), (NON_REFUSAL, c.non_refusal), (harm, c.asr)):
            if r and r["n"]:
                out.setdefault((c.setting, measure, where), r)
    for s, r in f.over_refusal.items():
        out[(s, BENIGN, "benign")] = r
    return out, harm


# --------------------------------------------------------------------------- across seeds
def combine(per_seed: dict[int, dict[tuple[str, str, str], dict]]) -> list[dict]:
    """One row per (setting, measure, where) any seed tested: per-seed rates, spread, the pooled
    test (Holm-adjusted over all rows) and in how many seeds the setting moved the pooled way."""
    keys = list(dict.fromkeys(k for tests in per_seed.values() for k in tests))
    settings = list(dict.fromkeys(k[0] for k in keys))
    rank = {m: i for i, m in enumerate((REFUSAL, BENIGN, NON_REFUSAL))}
    keys.sort(key=lambda k: (settings.index(k[0]), rank.get(k[1], len(rank)), k[2]))
    rows = []
    for setting, measure, where in keys:
        have = {seed: tests[(setting, measure, where)] for seed, tests in per_seed.items()
                if (setting, measure, where) in tests}
        pooled = pooled_test(list(have.values()))
        way = direction(pooled["difference"])
        rows.append({"setting": setting, "measure": measure, "where": where, "seeds": sorted(have),
                     "rate": {str(k): r["rate_first"] for k, r in have.items()},
                     "sft_rate": {str(k): r["rate_second"] for k, r in have.items()},
                     "spread": spread([r["rate_first"] for r in have.values() if r["rate_first"] is not None]),
                     "pooled": pooled, "direction": way,
                     "moved_in": sum(1 for r in have.values() if way and fnd.verdict(r) == way),
                     "seed_verdicts": {str(k): fnd.verdict(r) for k, r in have.items()}})
    for r, q in zip(rows, holm([r["pooled"]["p_value"] for r in rows])):
        r["pooled"]["p_adjusted"] = q
        r["verdict"] = fnd.verdict(r["pooled"])
    return rows


def summarise(cfg: StudyConfig, runs: list[tuple[int, RunDir]]) -> dict:
    per_seed, harm = {}, None
    for seed, rd in runs:
        tests, h = seed_tests(cfg, rd)
        per_seed[seed] = tests
        harm = harm or h
    root = runs[0][1].root
    evals = load_evals(runs[0][1])
    chosen, why = fnd.refusal_choice(cfg, evals)
    return {"study": cfg.name, "seeds": [s for s, _ in runs], "test": TEST_NAME, "alpha": fnd.ALPHA,
            "runs": {str(s): str(rd.root.relative_to(root)) if rd.root != root else "." for s, rd in runs},
            "harm_measure": harm, "refusal_verdict": {"judge": chosen[0] if chosen else None, "why": why},
            "rows": combine(per_seed)}


# --------------------------------------------------------------------------- rendering
def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def _p(p: float) -> str:
    return f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(r) + " |" for r in rows], ""]


def _rates_table(res: dict) -> list[str]:
    seeds = [str(s) for s in res["seeds"]]
    rows = []
    for r in res["rows"]:
        sp = r["spread"]
        sft = next(iter(r["sft_rate"].values()), None)
        rows.append([r["setting"], r["measure"], r["where"], _pct(sft), *[_pct(r["rate"].get(s)) for s in seeds],
                     _pct(sp["mean"]), _pct(sp["sd"]), f"{_pct(sp['min'])}–{_pct(sp['max'])}"])
    return _table(["setting", "measure", "prompts", "sft", *[f"seed {s}" for s in seeds], "mean", "sd",
                   "min–max"], rows)


def _pooled_table(res: dict) -> list[str]:
    n = len(res["seeds"])
    rows = []
    for r in res["rows"]:
        p = r["pooled"]
        moved = f"{r['moved_in']} of {len(r['seeds'])}" if r["direction"] else "—"
        rows.append([r["setting"], r["measure"], r["where"], f"{p['n']} ({p['prompts']})", f"{p['c']} / {p['b']}",
                     str(p["prompts_changed"]),
                     "n/a" if p["difference"] is None else f"{p['difference']:+.3f}", _p(p["p_value"]),
                     _p(p["p_adjusted"]), r["verdict"], moved])
    return [f"Pairs summed over the {n} seeds (setting vs sft, same prompts within each seed).", "",
            *_table(["setting", "measure", "prompts", "pairs (prompts)", "only sft / only setting",
                     "prompts with a net change", "pooled difference",
                     "p (raw)", "p (Holm)", "pooled verdict", "moved in k of n seeds"], rows)]


def to_markdown(res: dict) -> str:
    runs = ", ".join(f"seed {s}: `{p}`" for s, p in res["runs"].items())
    lines = [f"# Seeds: study '{res['study']}'", "",
             f"Seeds {', '.join(map(str, res['seeds']))} ({runs}; folders relative to the run directory, each "
             "with its own report). Shared across seeds, computed once: prompts, greedy and human answers and "
             "their scores, SFT and the SFT model's evaluation, the reward scorer's fit. Per seed: sampled "
             "answers and their scores, the pairs, DPO training, the trained models' evaluation, the probe.", "",
             "## Measures per seed", "",
             "Each setting's rate per seed on the prompts it shares with `sft` (the sft column: the shared SFT "
             f"model); the harm judge's rate is its {res['harm_measure']}. sd: sample standard deviation over "
             "seeds.", "", *_verdict_line(res), *_rates_table(res),
             "## Pooled test across seeds", "",
             f"Test: {res['test']}. Every pooled p-value is one family: Holm (1979) step-down, family-wise "
             f"{res['alpha']:.0%}; the pooled verdict reads the adjusted p. \"Moved in k of n seeds\": the seeds whose "
             "own report's test (Holm over that seed's tests, same level) moved in the pooled direction. Pairs "
             "of one prompt in different seeds share the SFT answer, so they are not independent draws: the test "
             "moves each prompt as one unit.", "",
             *_pooled_table(res)]
    return "\n".join(lines).rstrip() + "\n"


def _verdict_line(res: dict) -> list[str]:
    """Which refusal verdict the refusal rows use, and whether it passed on the labelled set (each
    seed's report says the same in full, with the agreement figures)."""
    v = res.get("refusal_verdict") or {}
    if not v.get("judge"):
        return []
    return [f"Refusal rows: the refusal verdict of `{v['judge']}`. {v['why']}", ""]


def write_report(cfg: StudyConfig, runs: list[tuple[int, RunDir]]) -> Path:
    """<run>/seeds/report.md and seeds.json from the seeds' run directories (the study's own first)."""
    res = summarise(cfg, runs)
    out = runs[0][1].path("seeds")
    write_json(out / "seeds.json", json.loads(json.dumps(res)))
    write_text(out / "report.md", to_markdown(res))
    return out / "report.md"
