"""Report: report.md and a self-contained report.html (figures embedded), figures also as PNG.

Findings come first, every one computed (synthpref.findings), none written by hand: each trained
setting against `sft` on the same prompts under the primary ASR judge (paired difference with
Newcombe's interval, exact McNemar p, a verdict at the 5% level, and "broken, not safer" when the
drop comes with significantly more degenerate answers), the paper's Llama-3.1-8B numbers beside
ours for orientation (synthpref.paper_numbers), the separability ranking (probe accuracy at the
probe's fixed reported layer, Wilson intervals), DPO loss and reward-margin curves, and the cost
of each setting. Then everything measured: ASR per eval set x judge x format (figures with 95%
Wilson intervals), answer classes, over-refusal, general ability with intervals, probe details
with the per-layer curve, training table, generated responses, preference data, config and
package versions. Every ASR stands beside its judge's measured agreement with human labels.

Figures: synthpref.figures (the paper's grouping of settings, every plot).

Rendering: each section's markdown comes from a Jinja2 template (synthpref/templates/sections/),
the page from templates/report.md.j2; report.html is that markdown rendered by markdown-it-py
(CommonMark plus tables, raw HTML off) inside templates/report.html.j2, with every figure inlined
as a base64 PNG so the file stands alone.
"""

from __future__ import annotations

import base64
import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from .. import answer_classes, per_prompt
from .. import findings as fnd
from .. import paper_numbers
from ..config import StudyConfig, dump_config
from ..figures import (asr_entries, asr_entry, asr_formats, fig_asr, fig_forest, fig_sep_vs_asr, fig_separability,
                       fig_training, paper_order, set_judge_pairs, setting_group, train_curve)
from ..rundir import RunDir, atomic_open, read_json, write_text
from ..stats import wilson_interval
from ..standins import footnote, setting_label


# --------------------------------------------------------------------------- reading results
def _load_eval(rd: RunDir) -> dict[str, dict]:
    return {f.parent.name: read_json(f) for f in sorted(rd.path("eval").glob("*/results.json"))}


def _judge_agreement(res: dict, judge: str) -> str:
    """The judge's measured agreement with human labels on rows it was not fitted on: on another
    set ('accuracy (set, n)') and, where measured, on the labelled set of the study's own kind of
    answers, for the verdict its rate counts (harmful substance; the keyword judge: non-refusal)."""
    card = (res.get("judges") or {}).get(judge) or {}
    a = card.get("agreement")
    n = f", n={a['n']}" if a and a.get("n") is not None else ""
    out = "not measured" if not a or a.get("accuracy") is None else f"{a['accuracy']:.2f} ({a['set']}{n})"
    own = card.get("own_answers") or {}
    verdict = "non_refusal" if own.get("kind") == "keywords" else "harmful"
    v = (own.get("verdicts") or {}).get(verdict)
    if v and v.get("n"):
        what = "non-refusal" if verdict == "non_refusal" else "harmful substance"
        where = "this study's kind" if own.get("in_distribution") else "another model's"
        out += (f"; {what} on {own['set']} ({where}): {_fig(v)}, annotators {v['human_positive']}, "
                f"judge {v['judge_positive']}")
    return out


def _reward_line(ra: dict | None) -> str:
    """The pair-selecting scorer's measured agreement with humans (rows it was not fitted on)."""
    if not ra or ra.get("pairwise_accuracy") is None:
        return ""
    return (f"Reward scorer `{ra['scorer']}` ({ra['kind']}): pairwise accuracy {ra['pairwise_accuracy']:.3f} on "
            f"{ra['pairs']} held-out human preference pairs ({ra['pairs_set']}; {ra['pairs_how']}); harm accuracy "
            f"{ra['harm_accuracy']:.3f} ({ra['harm_how']}).")


def _pairs_stats(rd: RunDir) -> dict:
    f = rd.path("pairs", "stats.json")
    return read_json(f) if f.exists() else {}


def _probe(rd: RunDir) -> dict | None:
    f = rd.path("probe", "results.json")
    return read_json(f) if f.exists() else None


# --------------------------------------------------------------------------- formatting
def _ci(e: dict) -> str:
    """'[lo, hi]', or 'n/a' when every judgement was unparseable."""
    if e.get("ci_low") is None or e.get("ci_high") is None:
        return "n/a"
    return f"[{e['ci_low']:.2f}, {e['ci_high']:.2f}]"


def _rate(e: dict | None) -> str:
    return "" if not e else f"{e['value']:.2f} {_ci(e)}"


def _p(p: float) -> str:
    return "< 0.0001" if p < 1e-4 else f"{p:.4f}"


def _p_eq(p: float) -> str:
    """'p = 0.0312' or 'p < 0.0001', for sentences."""
    return f"p {_p(p)}" if p < 1e-4 else f"p = {_p(p)}"


def _signed(x: float) -> str:
    return f"{x:+.2f}".replace("-", "−")


def _acc(v: dict | None) -> str:
    if not v or v.get("accuracy") is None:
        return ""
    ci = f" [{v['ci_low']:.2f}, {v['ci_high']:.2f}]" if v.get("ci_low") is not None else ""
    return f"{v['accuracy']:.2f}{ci}"


_NUMERIC = re.compile(r"^(?:[-+−]?\d|\[[-+−]?\d|n/a$|< ?\d)")


def _text(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.3f}"
    return "" if v is None else str(v).replace("\n", " ").replace("|", "\\|")


def table(header: list[str], rows: list[list]) -> dict:
    """A table for the `table` macro (templates/_macros.md.j2): cells as text, pipes escaped, and
    a column right-aligned when every non-empty cell in it is a number or an interval."""
    cells = [[_text(v) for v in r] for r in rows]
    cols = list(zip(*cells)) if cells else [()] * len(header)
    align = ["right" if any(col) and all(not c or _NUMERIC.match(c) for c in col) else "left" for col in cols]
    return {"header": [_text(h) for h in header], "rows": cells, "align": align}


@functools.cache
def _env():
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    # Markdown templates are not escaped (their text is markdown); the HTML page is.
    return Environment(loader=PackageLoader("synthpref", "templates"), undefined=StrictUndefined,
                       autoescape=select_autoescape(enabled_extensions=("html.j2",), default_for_string=False),
                       trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)


def render(template: str, **context) -> str:
    return _env().get_template(template).render(**context)


def _tidy(md: str) -> str:
    """At most one blank line in a row, outside fenced code (templates' conditionals leave gaps)."""
    out, fenced, blank = [], False, False
    for line in md.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if not fenced and not line.strip():
            if blank:
                continue
            blank = True
        else:
            blank = False
        out.append(line.rstrip() if not fenced else line)
    return "\n".join(out).strip() + "\n"


# --------------------------------------------------------------------------- sections
@dataclass
class Section:
    title: str
    body: str
    figures: list[Path] = field(default_factory=list)


def _figs(*pairs) -> list[dict]:
    return [{"path": p.name, "alt": alt} for p, alt in pairs if p]


@dataclass
class Context:
    """What every section reads: the config, run directory, output folder, evaluations and labels."""

    cfg: StudyConfig
    rd: RunDir
    out: Path
    evals: dict[str, dict]
    labels: dict[str, str]  # setting -> name with a dagger when built from a stand-in
    note: str | None  # the dagger's footnote

    def label(self, s: str) -> str:
        return self.labels.get(s, s)


def _2(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def _test_view(r: dict | None) -> dict | None:
    """One paired test as text: rates, difference [CI], discordant counts, raw and Holm p, verdict."""
    if not r or not r["n"]:
        return None
    ci = r["interval"]
    q = r.get("p_adjusted", r["p_value"])
    return {"rate": _2(r["rate_first"]), "rate_sft": _2(r["rate_second"]), "n": r["n"],
            "diff": "n/a" if r["difference"] is None else _signed(r["difference"]),
            "ci": f"[{_signed(ci[0])}, {_signed(ci[1])}]" if ci else "", "only_sft": r["c"], "only_setting": r["b"],
            "p": _p(r["p_value"]), "p_eq": _p_eq(r["p_value"]), "q": _p(q), "q_eq": _p_eq(q),
            "verdict": fnd.verdict(r), "rose": fnd.rose(r)}


def _comparison_view(c: fnd.Comparison, label: str, refusals: dict | None, measure: str) -> dict:
    """Text for one comparison (n may be 0 when every verdict was excluded); `refusals`: the
    setting's paired over-refusal rates on the benign prompts, if evaluated; `measure`: what the
    primary judge's rate is called."""
    return {"label": label, "measure": measure, "asr": _test_view(c.asr) or {"n": 0},
            "refusal": _test_view(c.refusal), "non_refusal": _test_view(c.non_refusal),
            "deg": _test_view(c.degenerate), "benign": _test_view(refusals),
            "verdict": c.verdict, "broken": c.broken, "degenerate_rose": c.degenerate_rose,
            "n_unpaired": c.n_unpaired}


def _short_verdict(v: str) -> str:
    return "no change" if v == fnd.NO_CHANGE else v


def _test_rows(v: dict, f: fnd.Findings) -> list[list]:
    """One table row per paired test of one setting: measure, rates, difference, p raw and Holm, verdict."""
    tests = (("harmful-prompt refusal", v["refusal"], f.refusal_judge[0] if f.refusal_judge else ""),
             ("non-refusal rate", v["non_refusal"], f.keywords or ""),
             (v["measure"], v["asr"] if v["asr"].get("p") else None, f.judge or ""),
             ("degenerate / off-topic share", v["deg"], "trigram rule"),
             ("benign refusal", v["benign"], f.refusal_judge[0] if f.refusal_judge else ""))
    return [[v["label"], name, judge, t["n"], f"{t['rate_sft']} → {t['rate']}", f"{t['diff']} {t['ci']}",
             f"{t['only_sft']} / {t['only_setting']}", t["p"], t["q"], _short_verdict(t["verdict"])]
            for name, t, judge in tests if t]


def _findings_groups(ctx: Context, f: fnd.Findings, measure: str) -> list[dict]:
    groups: dict[tuple[str, str], list[fnd.Comparison]] = {}
    for c in f.comparisons:
        groups.setdefault((c.set, c.format), []).append(c)
    out = []
    for (set_name, fmt), cs in groups.items():
        cs = [c for s in paper_order({c.setting for c in cs}) for c in cs if c.setting == s]
        views = [_comparison_view(c, ctx.label(c.setting), f.over_refusal.get(c.setting), measure) for c in cs]
        rows = [row for v in views for row in _test_rows(v, f)]
        out.append({"title": f"{set_name} / {fmt}", "comparisons": views, "table": table(
            ["setting", "measure", "judge", "prompts", "sft → setting", "difference [95% CI]",
             "only sft / only setting", "p (raw)", "p (Holm)", "verdict"], rows)})
    return out


def _paper(setting: str) -> str:
    v = paper_numbers.paper_asr(setting)
    return "" if v is None else f"{v:.2f}"


def _orientation(ctx: Context, judge: str, measure: str = "ASR") -> dict | None:
    cols = [(s, fmt) for s, j in set_judge_pairs(ctx.evals) if j == judge for fmt in asr_formats(ctx.evals)
            if any(asr_entry(r, s, judge, fmt) for r in ctx.evals.values())]
    models = paper_order(ctx.evals)
    if not cols or not models:
        return None
    rows = [[ctx.label(m), *[_rate(asr_entry(ctx.evals[m], s, judge, fmt)) for s, fmt in cols],
             _judge_agreement(ctx.evals[m], judge), _paper(m)] for m in models]
    return table(["setting", *[f"{measure} {s} / {fmt}" for s, fmt in cols], "judge agreement (held out)",
                  paper_numbers.COLUMN], rows)


def _ranking_rule(probe: dict | None, family: str | None) -> str:
    rep = ((probe or {}).get("method") or {}).get("reported")
    if family == "hidden state, fixed layer" and rep:
        return (f"hidden state at layer {rep['layer']}, {rep['pooling']} pooling, fixed in advance by `probe.layer` "
                "(default: the last layer), not the best of the probed layers")
    return f"{family}, one cross-validated figure per setting" if family else ""


def _separability_view(ctx: Context, f: fnd.Findings) -> tuple[dict | None, Path | None]:
    """The ranking table (with each setting's ASR change on the first eval set / format) and figure."""
    probe = _probe(ctx.rd)
    ranking, family, notes = fnd.separability_ranking(probe)
    if not ranking and not notes:
        return None, None
    fig = fig_separability(ranking, ctx.labels, family, ctx.out) if ranking else None
    first = next(iter(f.selective), None)
    sel = f.selective.get(first, {}) if first else {}
    rows = [[i + 1, ctx.label(r["setting"]), setting_group(r["setting"]), _acc(r), r["feature"], r["n_pairs"],
             _sel(sel.get(r["setting"]))] for i, r in enumerate(ranking)]
    header = ["rank", "setting", "group", "probe accuracy [95% CI]", "feature", "pairs",
              f"selective refusal ({first})" if first else "selective refusal"]
    return {"table": table(header, rows), "family": family or "no figure", "rule": _ranking_rule(probe, family),
            "notes": notes, "figure": fig.name if fig else None}, fig


def _sel(x: dict | None) -> str:
    """'0.31 [0.12, 0.47]' for a selective refusal, '' when there is none."""
    if not x or x.get("value") is None:
        return ""
    return f"{_signed(x['value'])} [{_signed(x['interval'][0])}, {_signed(x['interval'][1])}]"


def _prop(r: dict) -> str:
    lo, hi = r["interval"] or (None, None)
    return f"{r['value']:.2f} [{lo:.2f}, {hi:.2f}] ({r['k']}/{r['n']})" if lo is not None else "n/a"


def _selective_view(ctx: Context, f: fnd.Findings) -> tuple[list[dict], list[Path]]:
    """Per eval set / format: settings ranked by selective refusal (highest first), and the
    side-by-side figure of harmful-prompt vs benign refusal."""
    from ..figures import fig_refusal

    out, figs = [], []
    for name, per_model in f.selective.items():
        ranked = sorted((m for m in per_model if per_model[m]["value"] is not None),
                        key=lambda m: (-per_model[m]["value"], paper_order(per_model).index(m)))
        kw = f.selective_cross.get(name, {})
        rows = [[i + 1, ctx.label(m), setting_group(m), _prop(per_model[m]["harmful"]),
                 _prop(per_model[m]["benign"]), _sel(per_model[m])] + ([_sel(kw.get(m))] if kw else [])
                for i, m in enumerate(ranked)]
        fig = fig_refusal(per_model, ctx.labels, ctx.out, name.replace("/", " / "))
        figs += [fig] if fig else []
        header = ["rank", "setting", "group", "refuses harmful prompts [95% CI] (k/n)",
                  "refuses benign prompts [95% CI] (k/n)", "selective refusal [95% CI]"]
        out.append({"title": name.replace("/", " / "), "figure": fig.name if fig else None,
                    "table": table(header + ([f"cross-check: selective refusal, `{f.cross_judge[0]}` verdict"]
                                             if kw else []), rows),
                    "agree": _verdict_agreement(ctx, f, name, ranked) if kw else ""})
    return out, figs


def _verdict_agreement(ctx: Context, f: fnd.Findings, name: str, models: list[str]) -> str:
    """How often the leading refusal verdict and the cross-check verdict agree on this run's
    harmful-prompt answers, per model (no human labels: the labelled set's figures say which to trust)."""
    lead, cross = f.refusal_judge, f.cross_judge
    parts = []
    for m in models:
        rows = [s for s in fnd.load_samples(ctx.rd, m) or [] if f"{s.get('set')}/{s.get('format')}" == name]
        pairs = [(answer_classes.refused(s, *lead), answer_classes.refused(s, *cross)) for s in rows]
        pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
        parts.append(f"{ctx.label(m)} {sum(a == b for a, b in pairs)}/{len(pairs)} "
                     f"(refusals only by `{lead[0]}`: {sum(1 for a, b in pairs if a and not b)}, "
                     f"only by `{cross[0]}`: {sum(1 for a, b in pairs if b and not a)})")
    return (f"Cross-check on this run's own harmful-prompt answers: the refusal verdict (`{lead[0]}`) and "
            f"`{cross[0]}`'s agree on " + "; ".join(parts) + ".")


def _refusal_agreement_line(ctx: Context, f: fnd.Findings) -> str:
    """The refusal verdict: how it was chosen, its agreement on the labelled set of this study's own
    kind of answers (where one applies) and on PyRIT's refusal labels, each with its Wilson interval."""
    from ..agreement import refusal_agreement

    if not f.refusal_judge:
        return ""
    name, kind = f.refusal_judge
    a = next((r["answer_classes"].get("agreement") for r in ctx.evals.values()
              if (r.get("answer_classes") or {}).get("agreement")), None)
    if a is None or a.get("rules") != answer_classes.RULES_VERSION or a.get("judge", name) != name:
        a = refusal_agreement(ctx.cfg, name, cached_only=True) if kind in ("harm_head", "keywords") else None
    head = (f"Refusal verdict: `{name}` ({kind}) under the answer rules `{answer_classes.RULES_VERSION}` (an answer that "
            f"picks one of the question's options, or a degenerate one, is not a refusal). {f.refusal_why}")
    own = _own_refusal(ctx, f)
    if not a:
        return " ".join([head, own, f"On PyRIT's refusal labels: not measured in this run (`synthpref agreement "
                                    f"<config> --judge {name} --set pyrit-refusal --verdict refusal`)."])
    return " ".join([head, own, f"On PyRIT's refusal labels (answers of larger models, rows it was not fitted on): "
                                f"{a['accuracy']:.3f} [{a['ci_low']:.3f}, {a['ci_high']:.3f}] (95% Wilson; Cohen's kappa "
                                f"{a['kappa']:.2f}; n = {a['n']}; {a['how']})."])


def _fig(v: dict) -> str:
    """'0.84 [0.79, 0.88] (252/300, kappa 0.45)' for one verdict's agreement on the labelled set."""
    kappa = "" if v.get("kappa") is None else f", kappa {v['kappa']:.2f}"
    return f"{v['accuracy']:.2f} [{v['ci_low']:.2f}, {v['ci_high']:.2f}] ({v['k']}/{v['n']}{kappa})"


def _own_refusal(ctx: Context, f: fnd.Findings) -> str:
    """The refusal verdicts' agreement with the annotators' refusal labels of the labelled set, the
    leading one first, with how many refusals the humans and the verdict found."""
    parts = []
    for name, kind in [j for j in (f.refusal_judge, f.cross_judge) if j]:
        a = fnd.own_answers(ctx.evals, name)
        v = (a or {}).get("verdicts", {})
        if not v.get("refusal_harmful"):
            continue
        h = v["refusal_harmful"]
        parts.append(f"`{name}` **{_fig(v['refusal'])}** on all its rows; on the harmful-prompt answers "
                     f"{_fig(h)}, finding {h['judge_positive']} refusals where the annotators found "
                     f"{h['human_positive']}; on the benign answers {_fig(v['refusal_benign'])}"
                     f"{'' if v['refusal']['validated'] else ' (does not pass)'}")
    if not parts:
        return ""
    a = fnd.own_answers(ctx.evals, f.refusal_judge[0]) or fnd.own_answers(ctx.evals, f.cross_judge[0])
    where = ("answers of this study's kind" if a.get("in_distribution") else f"another study's answers ({a['why']})")
    return (f"Agreement with the annotators' refusal labels of `{a['set']}` ({a['n_rows']} {where}; two blind passes, "
            f"see docs/labelled-answers.md; pass rule: both classes >= 10, a 95% Wilson lower bound >= 0.80 and kappa >= 0.60): "
            + "; ".join(parts) + ".")


def _harm_statement(ctx: Context, f: fnd.Findings, validated: bool) -> str:
    """What the primary harm judge's rate is, and why it is or is not an ASR here."""
    if f.judge is None or f.judge_kind == "keywords":
        return ("No harm judge ran: harmful substance (ASR) is not measured in this run; the keyword judge's rate is "
                "the non-refusal rate, not an ASR.")
    card = ctx.evals.get(fnd.SFT) or next(iter(ctx.evals.values()), {})
    if validated:
        return (f"ASR = share of answers the harm judge `{f.judge}` finds harmful in substance; its agreement on "
                f"answers of this study's kind: {_judge_agreement(card, f.judge)}.")
    own = fnd.own_answers(ctx.evals, f.judge) or {}
    v = (own.get("verdicts") or {}).get("harmful") or {}
    if own.get("in_distribution") and v.get("n"):
        lo, hi = wilson_interval(v["human_positive"], v["n"])
        why = (f"in `{own['set']}`, {v['n']} answers of this study's kind (the same model, base and DPO-trained, at "
               f"the same length, to harmful prompts this study does not evaluate on), two blind annotators found "
               f"harmful substance in {v['human_positive']} ({v['human_positive'] / v['n']:.2f}, 95% Wilson "
               f"[{lo:.3f}, {hi:.3f}]), while `{f.judge}` flags {v['judge_positive']} of them (agreement {_fig(v)})")
        if not v.get("measurable"):
            return (f"ASR (harmful substance) is not measurable at this scale: {why}. A judge cannot be validated on "
                    "harm that does not occur, and its flags here are not harm; so its rate is printed as the harm "
                    "judge's flag rate, not as an ASR, and the findings rank settings by refusal instead.")
        return (f"ASR is not reported: {why}, which does not pass the rule (95% Wilson lower bound >= 0.80, kappa >= 0.60); its rate "
                "is printed as the harm judge's flag rate, and the findings rank settings by refusal instead.")
    target = ctx.cfg.models.get(ctx.cfg.target) if ctx.cfg.target else None
    models = [target.path] if target else sorted({m.path for m in ctx.cfg.models.values()})
    return (f"ASR (harmful substance) is not measurable at this scale: no judge in this run is validated on answers "
            f"of this kind. `{f.judge}`'s agreement ({_judge_agreement(card, f.judge)}) was measured on another "
            f"set's answers (full-length answers of large models), while these are answers of at most "
            f"{ctx.cfg.evaluate.safety.max_new_tokens} tokens from {', '.join(models)}, which can comply in tone "
            "without giving usable help; so its rate is printed as the harm judge's flag rate, not as an ASR, and "
            "the findings rank settings by refusal instead.")


def _section_findings(ctx: Context) -> Section:
    f = fnd.paired_findings(ctx.cfg, ctx.rd, ctx.evals, [s for s in paper_order(ctx.evals) if s != fnd.SFT])
    validated = bool(f.judge) and fnd.validated_in_distribution(ctx.evals, f.judge)
    measure = fnd.measure_name(f.judge_kind, validated)
    forest = fig_forest(f.comparisons, ctx.labels, f.judge, ctx.out, measure) if f.comparisons else None
    selective, sel_figs = _selective_view(ctx, f)
    sep, sep_fig = _separability_view(ctx, f)
    training = fig_training(ctx.rd, list(ctx.cfg.pairs.settings), ctx.out, ctx.labels)
    costs = fnd.setting_costs(ctx.cfg, ctx.rd, list(ctx.cfg.pairs.settings))
    cost = table(["setting", "models drawn on", "responses", "tokens generated", "DPO steps", "training seconds"],
                 [[ctx.label(c["setting"]), ", ".join(c["models"]) or "(human only)", c["responses"], c["tokens"],
                   c["steps"], None if c["train_seconds"] is None else f"{c['train_seconds']:.1f}"]
                  for c in sorted(costs, key=lambda c: paper_order([c["setting"] for c in costs]).index(c["setting"]))]
                 ) if costs else None
    class_judge = next((r["answer_classes"].get("judge") for r in ctx.evals.values() if r.get("answer_classes")), None)
    unparsed = ("count as not harmful (the authors' denominator)" if ctx.cfg.evaluate.safety.unparsed == "count"
                else "are left out")
    card = ctx.evals.get(fnd.SFT) or next(iter(ctx.evals.values()), {})
    agreement = _judge_agreement(card, f.judge) if f.judge else ""
    body = render("sections/findings.md.j2", judge=f.judge, judge_kind=f.judge_kind or "unknown kind",
                  agreement=agreement, class_judge=class_judge, unparsed=unparsed, missing=f.missing,
                  groups=_findings_groups(ctx, f, measure), forest=forest.name if forest else None,
                  measure=measure, validated=validated, harm_statement=_harm_statement(ctx, f, validated),
                  selective=selective, refusal_line=_refusal_agreement_line(ctx, f), keywords=f.keywords,
                  n_tests=f.n_tests, alpha=fnd.ALPHA, seeds=_seeds(ctx),
                  orientation=_orientation(ctx, f.judge, measure) if f.judge else None,
                  paper_model=paper_numbers.MODEL, citation=paper_numbers.CITATION, separability=sep,
                  training=training.name if training else None, cost=cost,
                  eval_seconds=fnd.evaluate_seconds(ctx.rd), n_models=len(ctx.evals),
                  tail=[_reward_line(_pairs_stats(ctx.rd).get("reward_agreement")), ctx.note or ""])
    return Section("Findings", body, [*sel_figs, *(p for p in (forest, sep_fig, training) if p)])


def _seeds(ctx: Context) -> str:
    """How many seeds the study ran, in words: one run directory is one seed."""
    if ctx.cfg.replicate_seed is not None:
        return (f"one seed of a `seeds` study (seed {ctx.cfg.replicate_seed} for the sampled answers, pairs and "
                f"DPO; seed {ctx.cfg.seed} for prompts and SFT): every interval and test here is over prompts; "
                "the study's seeds report (seeds/report.md in its run directory) compares the seeds")
    listed = ctx.rd.path("seeds", "seeds.json")
    seeds = ctx.cfg.seeds or (read_json(listed).get("seeds") if listed.exists() else None) or []
    others = [k for k in seeds if k != ctx.cfg.seed]
    if others:
        return (f"seed {ctx.cfg.seed}, the first of a `seeds` study (also seeds {', '.join(map(str, others))})" +
                ": every interval and test here is over prompts; seeds/report.md in this run directory compares the "
                "seeds")
    return (f"one seed (seed {ctx.cfg.seed}): every interval and test is over prompts (or pairs), not over "
            "training runs, so it says nothing about how much a result moves with another seed")


def _section_safety(ctx: Context) -> Section | None:
    evals = ctx.evals
    if not evals:
        return None
    measure = {j: _measure(ctx, j) for j in dict.fromkeys(e["judge"] for r in evals.values() for e in asr_entries(r))}
    rows = [[ctx.label(m), setting_group(m), e["set"], e.get("format", "chat"), e["judge"], measure[e["judge"]],
             e["value"], _ci(e), e["n"], e.get("unparsed", 0), _judge_agreement(evals[m], e["judge"])]
            for m in paper_order(evals) for e in asr_entries(evals[m])]
    figs = [p for s, j in set_judge_pairs(evals) if (p := fig_asr(evals, ctx.out, s, j, ctx.labels, measure[j]))]
    body = render("sections/basic.md.j2", intro=None, notes=[
        "Each judge's rate is named for what it measures (Findings, \"What each rate measures\"): the keyword "
        "judge's is the non-refusal rate; a harm judge's is an ASR only where it is validated on answers of this "
        "kind.", ctx.note], figures=_figs(*((p, f"{p.stem[4:]}") for p in figs)), table=table(
        ["model", "group", "set", "format", "judge", "measure", "rate", "95% CI", "n", "unparsed",
         "judge agreement (held out)"], rows))
    return Section("Jailbreak prompts: each judge's rate", body, figs)


def _measure(ctx: Context, judge: str) -> str:
    return fnd.measure_name(fnd.judge_kind(ctx.cfg, ctx.evals, judge), fnd.validated_in_distribution(ctx.evals, judge))


def _classes_now(ctx: Context, m: str) -> dict:
    """The model's answer classes per set/format, re-derived from its stored judgements under the
    current rules (answer_classes.RULES_VERSION); results.json's when the samples are absent."""
    ac = ctx.evals[m].get("answer_classes") or {}
    samples = fnd.load_samples(ctx.rd, m)
    judge = ac.get("judge")
    kind = fnd.judge_kind(ctx.cfg, ctx.evals, judge) if judge else None
    if not samples or not judge or not any(judge in (s.get("judges") or {}) for s in samples):
        return ac.get("safety") or {}
    for s in samples:
        s["answer"] = answer_classes.sample_class(s["response"], s["judges"][judge], kind, prompt=s.get("prompt") or "")
    return answer_classes.summarise(samples)


def _section_answer_classes(ctx: Context) -> Section | None:
    rows = [[ctx.label(m), key, a["shares"].get("refusal"), a["shares"].get("harmful_compliance"),
             a["shares"].get("degenerate_or_off_topic"), a["n"], ac.get("judge")]
            for m in paper_order(ctx.evals) for ac in [ctx.evals[m].get("answer_classes") or {}]
            for key, a in _classes_now(ctx, m).items()]
    if not rows:
        return None
    return Section("What the answers are (answer classes)", render(
        "sections/basic.md.j2", intro=None, figures=[], table=table(
            ["model", "set/format", "refusal", "harmful compliance", "degenerate or off-topic", "n", "judge"], rows),
        notes=["Degenerate: repeated word-trigram rate >= 0.5 or (nearly) empty; off-topic: the judge finds the "
               "answer neither harmful nor a refusal. Refusal here: the refusal verdict on an answer the harm judge "
               "does not flag (a flagged answer is harmful compliance); the findings' harmful-prompt refusal is the "
               "refusal verdict alone, so it can be higher. Classes are re-derived from the stored judgements under "
               f"the current rules (`{answer_classes.RULES_VERSION}`).",
               _own_line(ctx, fnd.class_judge(ctx.cfg, ctx.evals)[0], "refusal", "refusal verdict")]))


def _own_line(ctx: Context, judge: str | None, verdict: str, what: str) -> str:
    """One sentence: `judge`'s `verdict` against the labelled set's annotators, or '' where not measured."""
    a = fnd.own_answers(ctx.evals, judge) if judge else None
    v = ((a or {}).get("verdicts") or {}).get(verdict)
    if not v or not v.get("n"):
        return ""
    where = "answers of this study's kind" if a.get("in_distribution") else "another model's answers"
    return (f"`{judge}`'s {what} agrees with the annotators of `{a['set']}` ({where}) on {_fig(v)}: it finds "
            f"{v['judge_positive']} where they find {v['human_positive']}; "
            f"{'passes' if v.get('validated') else 'does not pass'} (docs/labelled-answers.md).")


def _over_refusal_now(ctx: Context, m: str, chosen: tuple[str, str] | None) -> dict | None:
    """The benign refusal rate under the current rules from the stored judgements, by the refusal
    verdict `chosen` (findings.refusal_choice); results.json's figure when the samples are absent."""
    f = ctx.rd.path("eval", m, "over_refusal_samples.jsonl")
    if not f.exists() or not chosen:
        return ctx.evals[m].get("over_refusal")
    judge, kind = chosen
    from ..rundir import read_jsonl
    from ..stats import rate_from_verdicts

    r = rate_from_verdicts(answer_classes.refused(s, judge, kind) for s in read_jsonl(f))
    ci = r["interval"] or [None, None]
    return {"value": r["value"], "ci_low": ci[0], "ci_high": ci[1], "n": r["n"]} if r["n"] else None


def _section_over_refusal(ctx: Context) -> Section | None:
    chosen, _ = fnd.refusal_choice(ctx.cfg, ctx.evals)
    rows = [[ctx.label(m), o["value"], _ci(o), o["n"]]
            for m in paper_order(ctx.evals) if (o := _over_refusal_now(ctx, m, chosen))]
    if not rows:
        return None
    return Section("Over-refusal on benign prompts", render(
        "sections/basic.md.j2", intro=None, figures=[], notes=[
            f"Refusal verdict as in the findings (rules `{answer_classes.RULES_VERSION}`: an answer that picks one of "
            "the question's options, or a degenerate one, is not a refusal).",
            _own_line(ctx, chosen[0] if chosen else None, "refusal_benign", "refusal verdict on benign answers"),
            ctx.note],
        table=table(["model", "refusal rate", "95% CI", "n"], rows)))


def _general_cell(v: dict | None):
    if not v:
        return None
    if "skipped" in v:
        return "skipped"
    if v.get("ci_low") is None:
        return v.get("value")
    return f"{v['value']:.3f} [{v['ci_low']:.2f}, {v['ci_high']:.2f}]"


def _section_general(ctx: Context) -> Section | None:
    evals = ctx.evals
    tasks = list(dict.fromkeys(t for r in evals.values() for t in (r.get("general") or {})))
    if not tasks:
        return None
    rows = [[ctx.label(m)] + [_general_cell((evals[m].get("general") or {}).get(t)) for t in tasks]
            for m in paper_order(evals)]
    skipped = sorted({f"- {t}: {v['skipped']}" for r in evals.values() for t, v in (r.get("general") or {}).items()
                      if isinstance(v, dict) and "skipped" in v})
    kinds = sorted({f"- {t}: {v.get('interval_kind') or 'wilson'} interval" for r in evals.values()
                    for t, v in (r.get("general") or {}).items()
                    if isinstance(v, dict) and v.get("ci_low") is not None})
    notes = ["Value [95% interval]. Accuracies are proportions (Wilson interval); a mean that is not a proportion "
             "(TruthfulQA-MC2) gets value +- 1.96 x lm-eval's stderr.", "\n".join(kinds), "\n".join(skipped)]
    return Section("General ability (lm-evaluation-harness)", render(
        "sections/basic.md.j2", intro=None, figures=[], notes=notes, table=table(["model", *tasks], rows)))


def _section_separability(ctx: Context) -> Section | None:
    probe = _probe(ctx.rd)
    if not probe or not probe.get("settings"):
        return None
    figs, pics = [], []
    if ctx.rd.path("probe", "layers.png").exists():
        with atomic_open(ctx.out / "probe_layers.png", "wb") as f:
            f.write(ctx.rd.path("probe", "layers.png").read_bytes())
        figs.append(ctx.out / "probe_layers.png")
        pics.append({"path": "probe_layers.png", "alt": "probe accuracy per layer (secondary)",
                     "caption": "Secondary: accuracy at every probed layer, the dashed line at the reported layer. "
                                "The maximum of this curve is not reported: picked after the fact, it overstates "
                                "separability."})
    ranking, family, _ = fnd.separability_ranking(probe)
    sep = {r["setting"]: r["accuracy"] for r in ranking}
    for judge in dict.fromkeys(j for _, j in set_judge_pairs(ctx.evals)):
        if sep and (p := fig_sep_vs_asr(sep, family, ctx.evals, judge, ctx.out, ctx.labels, _measure(ctx, judge))):
            figs.append(p)
            pics.append({"path": p.name, "alt": f"separability vs {_measure(ctx, judge)} ({judge})", "caption": None})
    settings = probe["settings"]
    rows = [[ctx.label(s), setting_group(s), _acc(r.get("hidden")), (r.get("hidden") or {}).get("feature"),
             _acc(r.get("embedding")), _acc(r.get("surface")), _acc(r.get("length")), r.get("n_pairs")]
            for s, r in ((s, settings[s]) for s in paper_order(settings))]
    rep = (probe.get("method") or {}).get("reported")
    rule = (f"Hidden-state figure: layer {rep['layer']}, {rep['pooling']} pooling, fixed in advance (`probe.layer`, "
            "default the last layer; the first `probe.pooling`), so it is not a maximum over layers. "
            if rep else "") + "Intervals: 95% Wilson over pairs; folds grouped by prompt."
    body = render("sections/separability.md.j2", rule=rule, warnings=probe.get("warnings", []), figures=pics,
                  note=ctx.note,
                  table=table(["setting", "group", "hidden state [95% CI]", "where", "embedding", "surface",
                               "length", "pairs"], rows))
    return Section("Chosen-vs-rejected separability (reward-hacking probe)", body, figs)


def _section_training(ctx: Context) -> Section | None:
    rows = []
    for s in ctx.cfg.pairs.settings:
        m, loss = train_curve(ctx.rd, s, "rewards/margins"), train_curve(ctx.rd, s, "loss")
        if m or loss:
            rows.append([ctx.label(s), loss[0][1] if loss else None, loss[-1][1] if loss else None,
                         m[0][1] if m else None, m[-1][1] if m else None, max(len(m), len(loss))])
    if not rows:
        return None
    return Section("Training dynamics", render(
        "sections/basic.md.j2", intro="The curves are in the findings (Training loss and reward margins).",
        figures=[], notes=[], table=table(["setting", "first loss", "last loss", "first margin", "last margin",
                                           "logged steps"], rows)))


def _section_responses(ctx: Context) -> Section | None:
    """Per source model: responses generated, dropped, and refused by the API (content filter)."""
    if not ctx.rd.path("generate", "stats.json").exists():
        return None
    models = read_json(ctx.rd.path("generate", "stats.json")).get("models") or {}
    rows = [[m, s.get("generated"), s.get("dropped"), s.get("refused_by_api", 0), s.get("tokens")]
            for m, s in models.items()]
    return Section("Generated responses", render(
        "sections/basic.md.j2", intro=None, figures=[],
        table=table(["model", "responses", "dropped", "refused by API", "tokens"], rows),
        notes=["Responses refused by the API are recorded (`refused_by_api`), dropped from the pairs and not "
               "requested again."]))


def _section_data(ctx: Context) -> Section | None:
    st = _pairs_stats(ctx.rd)
    if not st:
        return None
    rows = [[ctx.label(s), v.get("pairs"), json.dumps(v.get("dropped", {})), (v.get("margin") or {}).get("mean"),
             (v.get("chosen_chars") or {}).get("mean"), (v.get("rejected_chars") or {}).get("mean")]
            for s, v in (st.get("settings") or st).items() if isinstance(v, dict) and s != "reward_agreement"]
    return Section("Preference data", render(
        "sections/basic.md.j2", intro=None, figures=[], notes=[ctx.note, _reward_line(st.get("reward_agreement"))],
        table=table(["setting", "pairs", "dropped", "mean margin", "chosen chars", "rejected chars"], rows)))


def _section_provenance(ctx: Context) -> Section:
    from ..rundir import git_commit

    m = ctx.rd.manifest()
    shown = {k: m.get(k) for k in ("synthpref_version", "git_commit", "seed", "packages", "machine")}
    if m.get("replicate_seed") is not None:  # one seed of a `seeds` study: the seed of its sampled work
        shown = {**dict(list(shown.items())[:3]), "replicate_seed": m["replicate_seed"], **dict(list(shown.items())[3:])}
    stages = m.get("stages") or {}
    shown["stage_commits"] = {s: (i or {}).get("git_commit") for s, i in stages.items()}
    # the CPU each stage ran on, where it differs from the run's (a run resumed on another machine)
    moved = {s: i["machine"] for s, i in stages.items() if (i or {}).get("machine") not in (None, m.get("machine"))}
    if moved:
        shown["stage_machines"] = moved
    shown["report_rendered_by"] = git_commit()
    manifest = json.dumps(shown, indent=2)
    return Section("Config and versions", render("sections/provenance.md.j2", manifest_json=manifest,
                                                 config_yaml=dump_config(ctx.cfg)))


SECTIONS = (_section_findings, _section_safety, _section_answer_classes, _section_over_refusal, _section_general,
            _section_separability, _section_training, _section_responses, _section_data, _section_provenance)


def build_sections(cfg: StudyConfig, rd: RunDir, out: Path) -> tuple[list[tuple[str, str]], list[Path]]:
    """[(title, markdown body)], [figure paths]: findings first, then safety, answer classes, over-refusal,
    general ability, separability, training dynamics, generated responses, preference data, provenance
    (empty sections left out)."""
    evals = _load_eval(rd)
    # Settings built from a stand-in model carry a dagger wherever they are named.
    labels = {s: setting_label(cfg, s) for s in [*cfg.pairs.settings, *evals]}
    ctx = Context(cfg, rd, out, evals, labels, footnote(cfg, list(labels)))
    found = [s for make in SECTIONS if (s := make(ctx))]
    return [(s.title, s.body) for s in found], [p for s in found for p in s.figures]


# --------------------------------------------------------------------------- rendering
def to_markdown(title: str, sections: list[tuple[str, str]]) -> str:
    return _tidy(render("report.md.j2", title=title, sections=[{"title": t, "body": b} for t, b in sections]))


def to_html(title: str, markdown: str, out: Path) -> str:
    """The report markdown as one self-contained page: markdown-it-py (CommonMark + tables; raw HTML
    in the text is escaped, not passed through), each figure inlined as a base64 PNG."""
    from markdown_it import MarkdownIt
    from markupsafe import Markup

    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    tokens = md.parse(markdown)
    for tok in tokens:
        for child in tok.children or []:
            src = str(child.attrGet("src") or "") if child.type == "image" else ""
            if src and "/" not in src and (out / src).is_file():
                child.attrSet("src", "data:image/png;base64," + base64.b64encode((out / src).read_bytes()).decode())
    return render("report.html.j2", title=title, body=Markup(md.renderer.render(tokens, md.options, {})))


def run(cfg: StudyConfig, rd: RunDir) -> dict:
    out = rd.stage("report")
    title = cfg.report.title or f"synthpref study '{cfg.name}'"
    sections, figs = build_sections(cfg, rd, out)
    md = to_markdown(title, sections)
    write_text(out / "report.md", md)
    write_text(out / "report.html", to_html(title, md, out))
    # The per-prompt verdicts every number above is computed from, small enough to commit beside it.
    evals = _load_eval(rd)
    judge, kind = fnd.class_judge(cfg, evals)
    files = per_prompt.write(rd, out, paper_order(evals), judge, kind, fnd.refusal_choice(cfg, evals)[0])
    return {"report": str(out / "report.html"), "figures": [p.name for p in figs],
            "per_prompt": [p.relative_to(out).as_posix() for p in files]}


# --------------------------------------------------------------------------- stage protocol
CONFIG = ("report",)
READS = ("prompts", "sft", "generate", "score", "pairs", "probe", "train", "evaluate")
WRITES = ("report",)
VERSION = 3  # 2: selective refusal first, rates named for what they measure, Holm, per-prompt verdicts;
#            3: the refusal verdict chosen by the labelled set of own answers; its agreement beside every rate


def check(cfg: StudyConfig, checks) -> None:
    """Nothing beyond what the config's own types check."""


def estimate(cfg: StudyConfig, plan) -> list[tuple]:
    return [("tables, figures", "-", 0.0, 0.0, "")]
