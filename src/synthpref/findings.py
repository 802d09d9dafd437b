"""Findings: what a study's numbers say, computed from the run directory, never written by hand.

For every trained setting against the `sft` model, on the same prompts (paired by eval set,
format and prompt id), under the primary ASR judge (the first of `evaluate.safety.judges` that is
not a keyword matcher, else the first):

- ASR(setting) - ASR(sft) with Newcombe's hybrid-score interval for paired proportions
  (synthpref.stats.paired_difference_interval, Newcombe 1998 method 10);
- the exact two-sided McNemar p-value on the prompts whose verdict differs between the two models
  (synthpref.stats.mcnemar_exact);
- a verdict at the 5% level: "moved down", "moved up" or "no detectable change at the 5% level";
- the same McNemar test on the answer class `degenerate_or_off_topic` (synthpref.answer_classes,
  stored per sample in eval/<model>/safety_samples.jsonl): an ASR drop that comes with
  significantly more broken answers is "broken, not safer";
- the same paired test on the refusal class of the benign prompts (over-refusal,
  eval/<model>/over_refusal_samples.jsonl): an ASR drop that comes with significantly more
  benign refusals is stated as such.

Also: the separability ranking (probe/results.json, the fixed-layer figure) and the cost of each
setting (tokens generated for the responses its pairs draw on, DPO steps and seconds).

Each comparison is tested at the 5% level on its own; with k comparisons about 0.05 k of them can
come out "moved" by chance when nothing changed, so the report states k.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .config import StudyConfig
from .errors import ConfigError
from .rundir import RunDir, read_json, read_jsonl
from .stats import paired_rates

ALPHA = 0.05
SFT = "sft"
DEGENERATE = "degenerate_or_off_topic"
NO_CHANGE = "no detectable change at the 5% level"


# --------------------------------------------------------------------------- judges
def judge_kind(cfg: StudyConfig, evals: dict[str, dict], judge: str) -> str | None:
    """The judge's scorer kind: from a results.json judge card, else the config."""
    for res in evals.values():
        card = (res.get("judges") or {}).get(judge) or {}
        if card.get("kind"):
            return card["kind"]
    from .backends.scoring.base import scorer_spec

    try:
        return scorer_spec(judge, cfg).kind
    except ConfigError:
        return None


def primary_judge(cfg: StudyConfig, evals: dict[str, dict]) -> str | None:
    """The judge whose ASR the findings use: the first of evaluate.safety.judges (among those with
    results) that is not a keyword matcher, else the first. None when no model has an ASR."""
    present = list(dict.fromkeys(e["judge"] for r in evals.values() for e in r.get("safety", [])))
    if not present:
        return None
    ordered = [j for j in cfg.evaluate.safety.judges if j in present] or present
    return next((j for j in ordered if judge_kind(cfg, evals, j) != "keywords"), ordered[0])


# --------------------------------------------------------------------------- paired comparison
def load_samples(rd: RunDir, model: str) -> list[dict] | None:
    """eval/<model>/safety_samples.jsonl, or None when the evaluate stage did not write it."""
    f = rd.path("eval", model, "safety_samples.jsonl")
    return read_jsonl(f) if f.exists() else None


def harmful(sample: dict, judge: str, unparsed: str = "count") -> bool | None:
    """The judge's verdict on one sample, with the evaluate stage's unparsed policy: 'count' reads
    a reply unparsed after retries as not harmful (the ASR denominator is every response),
    'exclude' leaves the sample out (None)."""
    j = (sample.get("judges") or {}).get(judge)
    if j is None:
        return None
    if not j.get("parsed", True):
        return bool(j.get("harmful")) if unparsed == "count" else None
    return j.get("harmful")


def degenerate(sample: dict) -> bool | None:
    """Whether the answer is in the degenerate/off-topic class; None when it was not classed."""
    c = (sample.get("answer") or {}).get("class")
    return None if c is None else c == DEGENERATE


def verdict(r: dict) -> str:
    if not r["n"] or r["p_value"] >= ALPHA or r["difference"] == 0:
        return NO_CHANGE
    return "moved down" if r["difference"] < 0 else "moved up"


@dataclass
class Comparison:
    """One setting vs sft on one eval set / format under one judge (rates: setting first)."""

    setting: str
    set: str
    format: str
    judge: str
    asr: dict  # stats.paired_rates(setting harmful, sft harmful)
    degenerate: dict | None  # the same on the degenerate/off-topic class, None without classes
    n_unpaired: int  # prompts answered by only one of the two models (left out)
    verdict: str = ""
    degenerate_rose: bool = False
    broken: bool = False  # the ASR moved down and the degenerate share rose significantly

    def __post_init__(self):
        self.verdict = verdict(self.asr)
        d = self.degenerate
        self.degenerate_rose = bool(d and d["n"] and d["p_value"] < ALPHA and d["difference"] > 0)
        self.broken = self.verdict == "moved down" and self.degenerate_rose


def compare(samples: list[dict], sft_samples: list[dict], setting: str, judge: str,
            unparsed: str = "count") -> list[Comparison]:
    """Paired comparisons of a setting's samples with sft's, one per (set, format) both answered."""
    mine = {(s["set"], s["format"], s["prompt_id"]): s for s in samples}
    base = {(s["set"], s["format"], s["prompt_id"]): s for s in sft_samples}
    groups: dict[tuple[str, str], list] = {}
    for k in [*base, *(k for k in mine if k not in base)]:
        groups.setdefault(k[:2], []).append(k)
    out = []
    for (set_name, fmt), keys in groups.items():
        both = [k for k in keys if k in mine and k in base]
        if not both:
            continue
        asr = paired_rates((harmful(mine[k], judge, unparsed), harmful(base[k], judge, unparsed)) for k in both)
        deg = paired_rates((degenerate(mine[k]), degenerate(base[k])) for k in both)
        out.append(Comparison(setting, set_name, fmt, judge, asr, deg if deg["n"] else None,
                              len(keys) - len(both)))
    return out


def refused(sample: dict) -> bool | None:
    """Whether a benign answer is in the refusal class; None when it was not classed."""
    c = (sample.get("answer") or {}).get("class")
    return None if c is None else c == "refusal"


def compare_over_refusal(samples: list[dict], sft_samples: list[dict]) -> dict | None:
    """Refusal rate on the benign prompts, setting vs sft, paired by prompt (stats.paired_rates):
    an ASR that drops while benign refusals rise is a model that refuses more, not one that tells
    harmful from harmless better. None without classed answers on both sides."""
    mine = {s["prompt_id"]: s for s in samples}
    base = {s["prompt_id"]: s for s in sft_samples}
    r = paired_rates((refused(mine[k]), refused(base[k])) for k in base if k in mine)
    return r if r["n"] else None


@dataclass
class Findings:
    judge: str | None
    judge_kind: str | None
    comparisons: list[Comparison] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # why some settings could not be compared
    over_refusal: dict[str, dict] = field(default_factory=dict)  # setting -> paired refusal rates on benign prompts


def paired_findings(cfg: StudyConfig, rd: RunDir, evals: dict[str, dict], settings: list[str]) -> Findings:
    """Every setting in `settings` (that has an evaluation) against sft, under the primary judge."""
    judge = primary_judge(cfg, evals)
    out = Findings(judge, judge_kind(cfg, evals, judge) if judge else None)
    if judge is None:
        out.missing.append("no model has an attack success rate (eval/<model>/results.json)")
        return out
    if SFT not in evals:
        out.missing.append("the sft model was not evaluated, so no setting can be compared with it")
        return out
    base = load_samples(rd, SFT)
    if base is None:
        out.missing.append(f"{rd.path('eval', SFT, 'safety_samples.jsonl')} is missing: per-prompt verdicts are "
                           "needed to pair the two models; re-run `synthpref evaluate`")
        return out
    for s in settings:
        if s == SFT or s not in evals:
            continue
        mine = load_samples(rd, s)
        if mine is None:
            out.missing.append(f"{s}: {rd.path('eval', s, 'safety_samples.jsonl')} is missing")
            continue
        out.comparisons += compare(mine, base, s, judge, cfg.evaluate.safety.unparsed)
    benign_base = rd.path("eval", SFT, "over_refusal_samples.jsonl")
    for s in settings:
        f = rd.path("eval", s, "over_refusal_samples.jsonl")
        if s != SFT and benign_base.exists() and f.exists():
            r = compare_over_refusal(read_jsonl(f), read_jsonl(benign_base))
            if r is not None:
                out.over_refusal[s] = r
    return out


# --------------------------------------------------------------------------- separability
FAMILIES = (("hidden", "hidden state, fixed layer"), ("embedding", "sentence embedding"),
            ("surface", "surface features"))


def separability_ranking(probe: dict | None) -> tuple[list[dict], str | None, list[str]]:
    """(settings ordered by probe accuracy, highest first; the feature family used; notes).

    One family for every setting, so the ranking compares like with like: the hidden-state figure
    at the fixed reported layer when the probe has it, else the embedding, else the surface probe.
    A results.json from before the fixed-layer figure (version < 3) only has a maximum over layers,
    which is not used."""
    if not probe:
        return [], None, []
    settings = probe.get("settings") or {}
    notes = []
    if any("best" in r and "hidden" not in r for r in settings.values()):
        notes.append("probe/results.json holds only a maximum over layers (an older probe version), which is "
                     "biased upward and not used; re-run `synthpref probe` for the fixed-layer figure")
    for fam, label in FAMILIES:
        have = {s: r[fam] for s, r in settings.items() if (r.get(fam) or {}).get("accuracy") is not None}
        if not have:
            continue
        rows = [{"setting": s, "accuracy": v["accuracy"], "ci_low": v.get("ci_low"), "ci_high": v.get("ci_high"),
                 "feature": v.get("feature") or label, "n_pairs": settings[s].get("n_pairs")}
                for s, v in have.items()]
        left = sorted(set(settings) - set(have))
        if left:
            notes.append(f"no {label} figure for: {', '.join(left)}")
        return sorted(rows, key=lambda r: (-r["accuracy"], r["setting"])), label, notes
    return [], None, notes


# --------------------------------------------------------------------------- cost
def setting_costs(cfg: StudyConfig, rd: RunDir, settings: list[str]) -> list[dict]:
    """Per setting: the models its pairs draw on, responses and tokens generated for the sides it
    uses (greedy / sampled as its spec says; human responses cost no generation), DPO steps and
    training seconds (train/<setting>/done.json)."""
    from .stages.pairs import available_settings, expand_sources
    from .tables import load_responses, response_files

    responses = load_responses(rd, include_dropped=True) if response_files(rd) else None
    train_summary = ((rd.manifest().get("stages") or {}).get("train") or {}).get("summary") or {}
    out = []
    for s in settings:
        spec = available_settings(cfg).get(s)
        if spec is None:
            continue
        sides = [(expand_sources(cfg, list(src))[0], kind)
                 for src, kind in ((spec.chosen, spec.chosen_kind), (spec.rejected, spec.rejected_kind))]
        models = sorted(set().union(*(m for m, _ in sides)))
        row = {"setting": s, "models": models, "responses": None, "tokens": None,
               "steps": None, "train_seconds": None}
        if responses is not None:
            used = {r["response_id"]: r for r in responses for ms, kind in sides
                    if r["model"] in ms and (kind == "any" or r["kind"] == kind)}
            row["responses"] = len(used)
            row["tokens"] = sum(r.get("n_tokens") or 0 for r in used.values())
        done = rd.path("train", s, "done.json")
        if done.exists():
            d = read_json(done)
            row["steps"] = d.get("global_step")
            row["train_seconds"] = d.get("train_seconds")
        if row["train_seconds"] is None:  # older done.json: the train stage's wall time, if it trained this run
            t = (train_summary.get("settings") or {}).get(s) or {}
            row["train_seconds"] = None if t.get("skipped") else t.get("seconds")
        out.append(row)
    return out


def evaluate_seconds(rd: RunDir) -> float | None:
    """Wall seconds of the last evaluate stage (all models together; not recorded per model)."""
    return ((rd.manifest().get("stages") or {}).get("evaluate") or {}).get("seconds")
