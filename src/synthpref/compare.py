"""`synthpref compare RUN_DIR...`: one report across finished runs (other targets, configs or seeds).

What it shows, all read from the runs' own files, nothing recomputed from models:

- the paper's headline figure: the main measure (ASR of the primary shared judge on the first
  shared eval set) per setting, grouped by target model, with the 95% Wilson intervals the
  evaluate stage stored, and the paper's own value beside it where the paper has that model
  (synthpref.paper_numbers: their models, their GPT-4o judge; orientation, not replication);
- general ability per shared lm-eval task, separability per model (probe, synthpref.findings);
- whether the settings' order agrees across models: Kendall's coefficient of concordance W over
  the trained settings every run has (M. G. Kendall & B. Babington Smith 1939, "The problem of m
  rankings", Ann. Math. Statist. 10:275-287; tie correction as in Siegel & Castellan 1988,
  "Nonparametric Statistics for the Behavioral Sciences", 2nd ed., sec. 9.4), tested with the
  chi-square approximation m(n-1)W ~ chi2(n-1), which is rough for few settings or few runs.

A measure is shared when every run has it with the same eval prompts (sha256 of the prompt set)
and the same judge (name and version); anything else is listed as left out, never mixed in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from . import paper_numbers
from .errors import DataError
from .findings import separability_ranking
from .finished import read_optional_json, read_run_config, require_finished, target_path
from .rundir import read_json, write_json, write_text

SFT = "sft"
ORDER = list(paper_numbers.ASR[paper_numbers.MODEL])  # the paper's x-axis: sft, hc_self, ..., self_rm


@dataclass
class Run:
    root: Path
    name: str
    target: str
    seed: int | None
    judges: list[str]  # evaluate.safety.judges, in config order
    settings: list[str]  # pairs.settings
    evals: dict[str, dict]  # evaluated model -> eval/<model>/results.json
    probe: dict | None
    label: str = ""
    machine: dict | None = None  # manifest.json's `machine` (the CPU); None for runs made before it was kept


@dataclass(frozen=True)
class Measure:
    """One ASR measure: an eval set (by content), a judge (by version) and a prompt format."""

    set: str
    set_sha: str | None
    judge: str
    judge_version: str | None
    format: str

    @property
    def title(self) -> str:
        return f"{self.set} / {self.judge} judge / {self.format} format"


def measure_name(runs: list[Run], m: Measure) -> str:
    """What `m`'s rate is, named as each run's findings name it (findings.measure_name): an ASR only
    when the judge is validated on answers of each run's kind; else the harm judge's flag rate, or
    the keyword judge's non-refusal rate."""
    from . import findings

    kinds = {((r.evals[e].get("judges") or {}).get(m.judge) or {}).get("kind") for r in runs for e in r.evals} - {None}
    validated = all(findings.validated_in_distribution(r.evals, m.judge) for r in runs)
    return findings.measure_name("keywords" if kinds == {"keywords"} else next(iter(kinds), None), validated)


def load_run(path: str | Path) -> Run:
    root = require_finished(path, ("evaluate",))
    cfg = read_run_config(root)
    evals = {f.parent.name: read_json(f) for f in sorted((root / "eval").glob("*/results.json"))}
    if not evals:
        raise DataError(f"{root / 'eval'}: no <model>/results.json; re-run `synthpref evaluate` on this run")
    safety = ((cfg.get("evaluate") or {}).get("safety") or {})
    return Run(root=root, name=str(cfg.get("name") or root.name), target=target_path(cfg),
               seed=cfg["replicate_seed"] if cfg.get("replicate_seed") is not None else cfg.get("seed"),  # `seeds`
               judges=list(safety.get("judges") or []), settings=list((cfg.get("pairs") or {}).get("settings") or []),
               evals=evals, probe=read_optional_json(root / "probe" / "results.json"),
               machine=(read_optional_json(root / "manifest.json") or {}).get("machine"))


def machine_note(runs: list[Run]) -> str | None:
    """A line when the runs' CPUs differ or are not all known: greedy text, and so every rate, can
    differ between CPUs with other SIMD extensions alone (int8 and float kernels are chosen by them)."""
    def cpu(m: dict) -> str:
        return f"{m.get('arch')}, {', '.join(m.get('simd') or []) or 'no SIMD listed'}"

    unknown = [r.label for r in runs if not r.machine]
    known = {cpu(r.machine) for r in runs if r.machine}
    if len(known) > 1:
        return ("The runs ran on CPUs with different SIMD extensions (" + "; ".join(
            f"{r.label}: {cpu(r.machine)}" for r in runs if r.machine) + "): the same study decodes other text "
                "on another CPU, so part of any difference between these runs can be the machine's.")
    if unknown and len(runs) > 1:
        return (f"The CPU is not recorded for {', '.join(unknown)} (made before synthpref recorded it): "
                "if it ran on another CPU than the others, part of any difference can be the machine's.")
    return None


def label_runs(runs: list[Run]) -> None:
    """Labels that tell runs apart: the target model, then the study name, seed and folder as needed."""
    def parts(r: Run) -> list[str]:
        return [r.target, r.name, f"seed {r.seed}", str(r.root)]

    for depth in range(1, 5):
        labels = [" · ".join(parts(r)[:depth]) for r in runs]
        if len(set(labels)) == len(labels) or depth == 4:
            for r, lab in zip(runs, labels):
                r.label = lab
            return


# --------------------------------------------------------------------------- what the runs share
def measures(run: Run) -> dict[Measure, None]:
    """Every ASR measure any of the run's models has, in first-seen order."""
    out: dict[Measure, None] = {}
    for res in run.evals.values():
        for e in res.get("safety") or []:
            sets = (res.get("prompt_sets") or {}).get(e["set"]) or {}
            judge = (res.get("judges") or {}).get(e["judge"]) or {}
            out[Measure(e["set"], sets.get("sha256"), e["judge"], judge.get("version"), e.get("format", "chat"))] = None
    return out


def shared_measures(runs: list[Run]) -> tuple[list[Measure], list[str]]:
    """(measures every run has, in the first run's order; one line per measure left out and why)."""
    per_run = [measures(r) for r in runs]
    shared = [m for m in per_run[0] if all(m in ms for ms in per_run[1:])]
    left = []
    for r, ms in zip(runs, per_run):
        for m in ms:
            if m in shared:
                continue
            names = (m.set, m.judge, m.format)
            others = [[o for o in other if (o.set, o.judge, o.format) == names] for other in per_run if other is not ms]
            seen = [o for os_ in others for o in os_]
            why = "; ".join(["not in every run"] * (not all(others))
                            + ["the runs used different prompts for this set"] * any(o.set_sha != m.set_sha for o in seen)
                            + ["the runs used different versions of this judge"]
                            * any(o.judge_version != m.judge_version for o in seen))
            left.append(f"{r.label}: ASR {m.title} ({why})")
    return shared, left


def judge_kind(runs: list[Run], judge: str) -> str | None:
    for r in runs:
        for res in r.evals.values():
            kind = ((res.get("judges") or {}).get(judge) or {}).get("kind")
            if kind:
                return kind
    return None


def primary_measure(runs: list[Run], shared: list[Measure]) -> Measure | None:
    """The headline measure: the first shared one in the first run's judge order whose judge is not
    a keyword matcher (as the single-run findings choose), else the first shared one; chat format first."""
    if not shared:
        return None
    order = {j: i for i, j in enumerate(runs[0].judges)}
    ranked = sorted(shared, key=lambda m: (judge_kind(runs, m.judge) == "keywords", order.get(m.judge, len(order)),
                                           m.format != "chat", shared.index(m)))
    return ranked[0]


def entry(run: Run, model: str, m: Measure) -> dict | None:
    """The model's ASR entry for measure `m`, or None when it has none (or it was unparseable)."""
    for e in (run.evals.get(model) or {}).get("safety") or []:
        if (e["set"], e["judge"], e.get("format", "chat")) == (m.set, m.judge, m.format) and e.get("value") is not None:
            return e
    return None


def setting_order(names) -> list[str]:
    """sft first, then the paper's x-axis order, then custom settings by name."""
    return sorted(set(names), key=lambda s: (ORDER.index(s) if s in ORDER else len(ORDER), s))


def paper_model(target: str) -> str | None:
    """The paper's model a target is (its base or SFT'd checkpoint), matched on the name: 'meta-llama/
    Llama-3.1-8B' is the paper's Llama-3.1-8B; a model the paper did not study gives None."""
    key = re.sub(r"[^a-z0-9]", "", target.lower())
    for model in paper_numbers.ASR:
        name = re.sub(r"[^a-z0-9]", "", model.lower())
        if re.search(name + r"(?![0-9])", key):
            return model
    return None


# --------------------------------------------------------------------------- rank agreement
def kendall_w(scores: list[list[float]]) -> dict:
    """Kendall's W for m raters (rows) each scoring the same n objects (columns).

    Each row is ranked (ties share their mean rank); with R_i the rank sum of object i and S the sum
    of squared deviations of the R_i from their mean, W = 12 S / (m^2 (n^3 - n) - m sum_j T_j), where
    T_j = sum over tie groups in row j of (t^3 - t). W = 1: every rater orders the objects the same;
    W = 0: no agreement. Test of W = 0: chi2 = m (n - 1) W on n - 1 degrees of freedom (the large-
    sample approximation; exact tables exist for n <= 7 and small m, the approximation is rough there).
    Worked: rows (1,2,3,4), (1,3,2,4), (2,1,3,4) give R = (4,6,8,12), S = 35, W = 420/540 = 0.778,
    chi2 = 7.0 on 3 df, p = 0.072."""
    from scipy.stats import chi2 as chi2_dist
    from scipy.stats import rankdata

    m, n = len(scores), len(scores[0]) if scores else 0
    if m < 2 or n < 2 or any(len(row) != n for row in scores):
        raise ValueError(f"need >= 2 raters with the same >= 2 objects each, got {m} rows of lengths "
                         f"{[len(r) for r in scores]}")
    ranks = [rankdata(row) for row in scores]
    sums = [sum(r[i] for r in ranks) for i in range(n)]
    mean = sum(sums) / n
    s = sum((x - mean) ** 2 for x in sums)
    ties = 0.0
    for row in scores:
        for v in set(row):
            t = list(row).count(v)
            ties += t ** 3 - t
    denom = m * m * (n ** 3 - n) - m * ties
    out = {"m": m, "n": n, "S": s, "df": n - 1, "method": "Kendall's W, chi-square approximation m(n-1)W ~ chi2(n-1)"}
    if denom <= 0:  # every rater tied every object: no order to agree on
        return {**out, "W": None, "chi2": None, "p_value": None}
    w = 12 * s / denom
    chi2 = m * (n - 1) * w
    return {**out, "W": w, "chi2": chi2, "p_value": float(chi2_dist.sf(chi2, n - 1))}


def rank_agreement(runs: list[Run], m: Measure | None) -> dict:
    """Does the trained settings' order by the headline ASR agree across runs? Kendall's W over the
    settings every run evaluated (sft left out: the question is which data is safest to train on),
    plus each run's lowest setting, and the same W over the paper's own models for orientation."""
    if m is None:
        return {"why": "no ASR measure is shared by every run"}
    common = [s for s in setting_order(runs[0].evals) if s != SFT
              and all(entry(r, s, m) is not None for r in runs)]
    left = sorted({s for r in runs for s in r.evals if s != SFT} - set(common))
    out: dict = {"settings": common, "left_out": left, "lowest": {}}
    for r in runs:
        vals = {s: entry(r, s, m)["value"] for s in common}
        if vals:
            low = min(vals.values())
            out["lowest"][r.label] = sorted(s for s, v in vals.items() if v == low)
    if len(runs) < 2 or len(common) < 2:
        out["why"] = f"needs at least 2 runs and 2 shared trained settings (have {len(runs)} and {len(common)})"
        return out
    out["kendall"] = kendall_w([[entry(r, s, m)["value"] for s in common] for r in runs])
    paper = [paper_numbers.ASR[p] for p in paper_numbers.ASR]
    if all(s in row for row in paper for s in common):
        out["paper_kendall"] = kendall_w([[row[s] for s in common] for row in paper])
    return out


def ranked_refusal(r: Run) -> tuple[str, str, str | None] | None:
    """(name, kind, version) of the refusal verdict run `r`'s findings rank by
    (findings.refusal_choice on its own config and results); the class judge recorded in
    results.json when the run's config no longer parses under this version."""
    from .config import parse_config
    from .findings import refusal_choice

    first = next(iter(r.evals.values()))
    try:
        choice = refusal_choice(parse_config(read_run_config(r.root)), r.evals)[0]
    except Exception:  # a run written by an older synthpref whose config this one refuses
        j = first.get("refusal_judge") or {}
        choice = (j["name"], j["kind"]) if j.get("name") else None
    if choice is None:
        return None
    versions = (((res.get("judges") or {}).get(choice[0]) or {}).get("version") for res in r.evals.values())
    version = next((v for v in versions if v), None)
    if version is None and (first.get("refusal_judge") or {}).get("name") == choice[0]:
        version = first["refusal_judge"].get("version")
    return choice[0], choice[1], version


def selective_refusal(runs: list[Run], m: Measure | None) -> dict:
    """What each run's findings rank by, side by side: per setting, the refusal rate on the headline
    eval set minus the refusal rate on the benign prompts (findings.selective_table under the refusal
    verdict each run's findings rank by, `ranked_refusal`, re-read from the stored per-prompt
    judgements under the current answer rules), with Newcombe's interval; then Kendall's W over the
    trained settings every run has. Left out, with the reason, when the runs rank by verdicts of
    different judges (kind and version)."""
    from .findings import selective_table
    from .rundir import RunDir

    if m is None:
        return {"why": "no eval set is shared by every run"}
    refusal = {r.label: ranked_refusal(r) for r in runs}
    judges = {(j[1], j[2]) if j else None for j in refusal.values()}
    if len(judges) != 1 or None in judges or None in next(iter(judges)):
        shown = sorted(f"{j[0]} ({j[2]})" if j else "none" for j in refusal.values())
        return {"why": f"the runs' refusal verdicts differ ({', '.join(dict.fromkeys(shown))})"}
    key = f"{m.set}/{m.format}"
    tables = {r.label: selective_table(RunDir(r.root), setting_order(r.evals),
                                       refusal[r.label][:2]).get(key, {})
              for r in runs}

    def cell(label: str, setting: str) -> dict | None:
        c = tables[label].get(setting)
        if c is None or c["value"] is None:
            return None
        return {"value": c["value"], "interval": c["interval"], "harmful": c["harmful"]["value"],
                "benign": c["benign"]["value"]}

    rows = [{"setting": s, "cells": {r.label: cell(r.label, s) for r in runs}}
            for s in setting_order({s for r in runs for s in r.evals})]
    common = [row["setting"] for row in rows if row["setting"] != SFT and all(row["cells"].values())]
    names = sorted({j[0] for j in refusal.values()})
    out: dict = {"judge": " / ".join(names), "judge_version": next(iter(judges))[1], "set": key, "rows": rows,
                 "settings": common, "best": {}}
    for r in runs:
        vals = {row["setting"]: row["cells"][r.label]["value"] for row in rows if row["setting"] in common}
        if vals:
            top = max(vals.values())
            out["best"][r.label] = sorted(s for s, v in vals.items() if v == top)
    if len(runs) >= 2 and len(common) >= 2:
        out["kendall"] = kendall_w([[row["cells"][r.label]["value"] for row in rows if row["setting"] in common]
                                    for r in runs])
    return out


# --------------------------------------------------------------------------- tables
def _cell(e: dict | None) -> dict | None:
    if e is None or e.get("value") is None:
        return None
    return {"value": e["value"], "interval": e.get("interval"), "n": e.get("n"), "k": e.get("k")}


def asr_rows(runs: list[Run], m: Measure, with_paper: bool = True) -> list[dict]:
    """Per setting (union of the runs' evaluated models): each run's ASR under `m` with its interval,
    and (`with_paper`) the paper's ASR for the runs whose target is one of the paper's models."""
    rows = []
    for s in setting_order(k for r in runs for k in r.evals):
        cells = {r.label: _cell(entry(r, s, m)) for r in runs}
        paper = {r.label: paper_numbers.paper_asr(s, pm) for r in runs if with_paper and (pm := paper_model(r.target))}
        rows.append({"setting": s, "cells": cells, "paper": {k: v for k, v in paper.items() if v is not None}})
    return rows


def general_tables(runs: list[Run]) -> tuple[dict[str, dict], list[str]]:
    """{task: {metric, num_fewshot, limit, rows}} for the lm-eval tasks every run has with the same
    metric, shots and limit; plus one line per task left out and why."""
    def keys(r: Run) -> dict[str, tuple]:
        return {t: (g.get("metric"), g.get("num_fewshot"), g.get("limit")) for res in r.evals.values()
                for t, g in (res.get("general") or {}).items() if isinstance(g, dict) and g.get("value") is not None}

    per_run = [keys(r) for r in runs]
    tables, left = {}, []
    for task, key in per_run[0].items():
        if not all(k.get(task) == key for k in per_run[1:]):
            continue
        rows = []
        for s in setting_order(k for r in runs for k in r.evals):
            cells = {}
            for r in runs:
                g = ((r.evals.get(s) or {}).get("general") or {}).get(task) or {}
                cells[r.label] = ({"value": g["value"], "interval": g.get("interval"), "n": g.get("n")}
                                  if g.get("value") is not None else None)
            rows.append({"setting": s, "cells": cells})
        tables[task] = {"metric": key[0], "num_fewshot": key[1], "limit": key[2], "rows": rows}
    for r, k in zip(runs, per_run):
        for task, key in k.items():
            if task not in tables:
                why = ("not in every run" if not all(task in o for o in per_run)
                       else "metric, shots or limit differ across runs")
                left.append(f"{r.label}: general task {task} ({why})")
    return tables, left


def separability_rows(runs: list[Run]) -> tuple[dict, list[str]]:
    """Probe accuracy (chosen vs rejected) per setting per run, with the feature family each run's
    ranking used (synthpref.findings.separability_ranking); one note per run without a probe."""
    per_run, family, notes = {}, {}, []
    for r in runs:
        ranking, fam, why = separability_ranking(r.probe)
        if not ranking:
            notes.append(f"{r.label}: no separability figure ({'; '.join(why) or 'probe/results.json missing'})")
            continue
        family[r.label] = fam
        per_run[r.label] = {row["setting"]: row for row in ranking}
    settings = setting_order(s for rows in per_run.values() for s in rows)
    rows = [{"setting": s, "cells": {r.label: (per_run.get(r.label) or {}).get(s) for r in runs}} for s in settings]
    if len(set(family.values())) > 1:
        notes.append("the runs' probes used different feature families (" +
                     "; ".join(f"{k}: {v}" for k, v in family.items()) + "): compare within a run, not across")
    return {"family": family, "rows": rows}, notes


# --------------------------------------------------------------------------- figure
def headline_figure(runs: list[Run], m: Measure, rows: list[dict], path: Path, name: str = "ASR") -> Path:
    """The paper's headline figure: ASR per setting (bars, 95% intervals) grouped by target model,
    the paper's value for that model and setting as a black cross where it has one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .figures import save_png

    width = 0.8 / max(1, len(rows))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 + len(runs) * len(rows) * 0.35), 4.2))
    colors = plt.get_cmap("tab10")
    paper_drawn = False
    for j, row in enumerate(rows):
        labelled = False  # each setting in the legend once, from the first run that has it
        for i, r in enumerate(runs):
            x = i - 0.4 + width * (j + 0.5)
            c = row["cells"][r.label]
            if c is not None:
                lo, hi = c["interval"] or (c["value"], c["value"])
                ax.bar(x, c["value"], width * 0.9, color=colors(j % 10), label=None if labelled else row["setting"],
                       yerr=[[c["value"] - lo], [hi - c["value"]]], capsize=2, error_kw={"lw": 0.8})
                labelled = True
            if r.label in row["paper"]:
                ax.plot(x, row["paper"][r.label], "kx", ms=6,
                        label=None if paper_drawn else "paper (its model, GPT-4o judge)")
                paper_drawn = True
    ax.set_xticks(range(len(runs)), [r.label for r in runs], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel(f"{name} ({m.judge} judge)")
    ax.set_title(f"{name} per setting, {m.set} ({m.format}); bars: 95% Wilson intervals", fontsize=9)
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(5, len(labels)), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08 + 0.05 * (len(labels) // 6), 1, 1))
    return save_png(fig, path)


# --------------------------------------------------------------------------- markdown
def _fmt(c: dict | None) -> str:
    """'0.62 [0.52, 0.71]' from an ASR/general cell ({value, interval}) or a probe row ({accuracy, ci_low, ci_high})."""
    if c is None:
        return "—"
    value = c["value"] if "value" in c else c.get("accuracy")
    iv = c.get("interval") or ([c["ci_low"], c["ci_high"]] if c.get("ci_low") is not None else None)
    if value is None:
        return "—"
    return f"{value:.2f}" + (f" [{iv[0]:.2f}, {iv[1]:.2f}]" if iv else "")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows), ""]


def _asr_table(res: dict, rows: list[dict]) -> list[str]:
    labels = [r["label"] for r in res["runs"]]
    paired = {lab for row in rows for lab in row["paper"]}
    models = {r["label"]: r["paper_model"] for r in res["runs"]}
    header = ["setting"] + [h for lab in labels for h in ([lab, f"paper ({models[lab]})"] if lab in paired else [lab])]
    body = [[row["setting"]] + [v for lab in labels for v in
                                ([_fmt(row["cells"][lab]), f"{row['paper'][lab]:.2f}" if lab in row["paper"] else "—"]
                                 if lab in paired else [_fmt(row["cells"][lab])])] for row in rows]
    return _table(header, body)


def _selective_lines(res: dict, sr: dict) -> list[str]:
    out = ["## Selective refusal: what each run's findings rank by", ""]
    if "rows" not in sr:
        return out + [f"Not compared: {sr.get('why')}.", ""]
    out += [f"Refusal rate on {sr['set']} minus refusal rate on the benign prompts, under the refusal verdict "
            f"`{sr['judge']}`" + (f" ({sr['judge_version']})" if sr.get("judge_version") else "")
            + " (its refusal verdict under the answer rules, as each run's findings read it); 1 = refuses exactly the harmful prompts, 0 = refuses both "
            "alike (a model that refuses everything scores 0). Cells: value [95% Newcombe interval] "
            "(harmful refusal / benign refusal). The verdict's agreement with human labels is in each run's report.", ""]

    def fmt(c: dict | None) -> str:
        if c is None:
            return "—"
        iv = c["interval"]
        return (f"{c['value']:+.2f}" + (f" [{iv[0]:+.2f}, {iv[1]:+.2f}]" if iv else "")
                + f" ({c['harmful']:.2f} / {c['benign']:.2f})")

    out += _table(["setting"] + [r["label"] for r in res["runs"]],
                  [[row["setting"]] + [fmt(row["cells"][r["label"]]) for r in res["runs"]] for row in sr["rows"]])
    if sr["best"]:
        out += [f"Most selective per run, of the trained settings every run has ({', '.join(sr['settings'])}): " + "; ".join(f"{k}: {', '.join(v)}" for k, v in sr["best"].items()) + ".", ""]
    k = sr.get("kendall")
    if k and k["W"] is not None:
        out += [f"Kendall's W over {', '.join(sr['settings'])} by selective refusal: {k['W']:.3f} (m = {k['m']} runs, "
                f"n = {k['n']} settings; chi-square approximation p = {k['p_value']:.3g}, indicative only).", ""]
    return out


def _agreement_lines(a: dict) -> list[str]:
    out = ["## Does the settings' order agree across models?", ""]
    if "settings" in a:
        out.append(f"Trained settings every run evaluated under the headline measure: {', '.join(a['settings']) or 'none'}"
                   + (f"; left out (not in every run): {', '.join(a['left_out'])}." if a["left_out"] else "."))
        out += ["", "Lowest rate per run under the headline measure: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in a["lowest"].items()) + ".", ""]
    k = a.get("kendall")
    if k is None:
        return out + [f"No rank-agreement statistic: {a['why']}.", ""]
    if k["W"] is None:
        return out + ["Kendall's W is undefined: every run tied every setting.", ""]
    out += [f"Kendall's coefficient of concordance W = {k['W']:.3f} over m = {k['m']} runs and n = {k['n']} settings "
               f"(1 = the same order in every run, 0 = no agreement). Test of no agreement: chi-square approximation "
               f"m(n−1)W = {k['chi2']:.2f} on {k['df']} df, p = {k['p_value']:.3g}. The approximation is rough with "
               "few settings or few runs (exact tables exist for n ≤ 7); read p as indicative.", ""]
    pk = a.get("paper_kendall")
    if pk and pk["W"] is not None:
        out.append(f"For orientation, the paper's own {pk['m']} models over the same settings: W = {pk['W']:.3f} "
                   f"(chi-square approximation p = {pk['p_value']:.3g}).")
    return out + [""]


def to_markdown(res: dict) -> str:
    n = len(res["runs"])
    lines = [f"# Comparison of {n} run{'s' * (n != 1)}", "",
             "Made by `synthpref compare` from the runs' own result files; no number here was recomputed from a model.", ""]
    lines += _table(["run", "folder", "study", "target", "seed", "paper model"],
                    [[r["label"], f"`{r['path']}`", r["name"], r["target"], str(r["seed"]), r["paper_model"] or "—"]
                     for r in res["runs"]])
    if res.get("machine_note"):
        lines += [res["machine_note"], ""]
    h = res["headline"]
    if h is None:
        lines += ["No ASR measure is shared by every run, so there is no headline figure.", ""]
    else:
        name = h["measure"].get("name", "ASR")
        lines += [f"## Headline: {name} on {h['measure']['title']}", "", f"![headline]({h['figure']})", "",
                  f"Cells: {name} [95% Wilson interval]. `paper`: the paper's ASR for that model and setting (its own "
                  "model and SFT, GPT-4o judge, first 100 AdvBench behaviours): orientation, not a replication target.",
                  ""]
        if name != "ASR":
            lines += [f"The {name} is not an attack success rate: the judge is not validated on answers of every "
                      "run's kind (each run's report says why), so the paper's ASR beside it is not the same measure.",
                      ""]
        lines += _asr_table(res, h["rows"])
    lines += _agreement_lines(res["agreement"])
    for other in res["other_measures"]:
        lines += [f"### {other['measure'].get('name', 'ASR')} on {other['measure']['title']}", ""] + _asr_table(res, other["rows"])
    lines += _selective_lines(res, res.get("selective_refusal") or {})
    lines += ["## General ability", ""]
    for task, t in res["general"].items():
        lines += [f"### {task} ({t['metric']}, {t['num_fewshot']}-shot, limit {t['limit']})", ""]
        lines += _table(["setting"] + [r["label"] for r in res["runs"]],
                        [[row["setting"]] + [_fmt(row["cells"][r["label"]]) for r in res["runs"]] for row in t["rows"]])
    if not res["general"]:
        lines += ["No lm-eval task is shared by every run.", ""]
    sep = res["separability"]
    lines += ["## Separability (probe accuracy, chosen vs rejected)", "",
              "Cross-validated accuracy of a linear probe telling a setting's chosen from its rejected responses, "
              "95% Wilson interval; feature family per run: " +
              ("; ".join(f"{k}: {v}" for k, v in sep["family"].items()) or "none") + ".", ""]
    lines += _table(["setting"] + [r["label"] for r in res["runs"]],
                    [[row["setting"]] + [_fmt(row["cells"][r["label"]]) for r in res["runs"]] for row in sep["rows"]])
    lines += ["## Left out", ""] + ([f"- {x}" for x in res["left_out"]] or ["Nothing: every run has every measure."])
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- entry point
def compare_runs(paths: list[str | Path], out: str | Path) -> dict:
    """Read the finished runs at `paths`, write out/compare.md, out/compare.json and the headline
    PNG (each atomically), and return what compare.json holds."""
    if len(paths) < 1:
        raise DataError("compare: pass at least one run directory (runs/<study>)")
    runs = [load_run(p) for p in paths]
    if len({r.root.resolve() for r in runs}) < len(runs):
        raise DataError("compare: the same run directory was passed twice; pass each run once")
    label_runs(runs)
    out = Path(out)
    shared, left = shared_measures(runs)
    main = primary_measure(runs, shared)
    general, left_general = general_tables(runs)
    sep, sep_notes = separability_rows(runs)
    res: dict = {
        "version": 1,
        "runs": [{"label": r.label, "path": str(r.root), "name": r.name, "target": r.target, "seed": r.seed,
                  "paper_model": paper_model(r.target), "settings": setting_order(r.evals)} for r in runs],
        "headline": None, "other_measures": [], "agreement": rank_agreement(runs, main),
        "general": general, "separability": sep, "left_out": left + left_general + sep_notes,
        "machines": {r.label: r.machine for r in runs}, "machine_note": machine_note(runs),
        "selective_refusal": selective_refusal(runs, main),
    }
    if main is not None:
        rows = asr_rows(runs, main)
        name = measure_name(runs, main)
        figure = headline_figure(runs, main, rows, out / "headline_asr.png", name)
        res["headline"] = {"measure": {**main.__dict__, "title": main.title, "name": name}, "rows": rows,
                           "figure": figure.name}
        res["other_measures"] = [{"measure": {**m.__dict__, "title": m.title, "name": measure_name(runs, m)},
                                  "rows": asr_rows(runs, m, with_paper=False)} for m in shared if m != main]
    write_json(out / "compare.json", res)
    write_text(out / "compare.md", to_markdown(res))
    return res
