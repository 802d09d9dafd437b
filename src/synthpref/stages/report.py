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

from .. import findings as fnd
from .. import paper_numbers
from ..config import StudyConfig, dump_config
from ..figures import save_png
from ..rundir import RunDir, atomic_open, read_json, write_text
from ..standins import footnote, setting_label

# How the paper groups the settings on its x-axis: pairs whose two sides come from different
# sources ("multi-model") vs. pairs the target generates itself.
MULTI_MODEL = {"original", "hc_self", "gpt4o_self", "stronger_self", "peer_rm", "all_rm"}
SELF_GENERATED = {"self_rm"}
PAPER_ORDER = ["sft", "hc_self", "gpt4o_self", "stronger_self", "peer_rm", "all_rm", "original", "self_rm"]
COLORS = {"baseline": "#888888", "multi-model": "#d95f02", "self-generated": "#1b9e77", "custom": "#7570b3"}


def _group(model: str) -> str:
    if model == "sft":
        return "baseline"
    return "self-generated" if model in SELF_GENERATED else "multi-model" if model in MULTI_MODEL else "custom"


def _order(models) -> list[str]:
    return sorted(models, key=lambda m: (PAPER_ORDER.index(m) if m in PAPER_ORDER else len(PAPER_ORDER), m))


# --------------------------------------------------------------------------- reading results
def _load_eval(rd: RunDir) -> dict[str, dict]:
    return {f.parent.name: read_json(f) for f in sorted(rd.path("eval").glob("*/results.json"))}


def _asr_entries(res: dict) -> list[dict]:
    """ASR entries: [{judge, set, format, value, ci_low, ci_high, n, ...}]."""
    return list(res.get("safety", []))


def _curve(rd: RunDir, setting: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of one logged metric (`loss`, `rewards/margins`) from train/<setting>/metrics.jsonl."""
    f = rd.path("train", setting, "metrics.jsonl")
    if not f.exists():
        return []
    pts = []
    for line in f.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue  # metrics.jsonl is appended as training runs; a kill can tear its last line
        if key in r:
            pts.append((r.get("step", len(pts)), r[key]))
    return pts


def _combos(evals: dict[str, dict]) -> list[tuple[str, str]]:
    """Every (eval set, judge) pair present in any model's results, in first-seen order."""
    return list(dict.fromkeys((e["set"], e["judge"]) for res in evals.values() for e in _asr_entries(res)))


def _formats(evals: dict[str, dict]) -> list[str]:
    return list(dict.fromkeys(e.get("format", "chat") for res in evals.values() for e in _asr_entries(res)))


def _entry(res: dict, set_name: str, judge: str, fmt: str) -> dict | None:
    for e in _asr_entries(res):
        if e["set"] == set_name and e["judge"] == judge and e.get("format", "chat") == fmt and e["value"] is not None:
            return e
    return None


def _slug(*parts: str) -> str:
    return "_".join("".join(c if c.isalnum() or c in "-." else "-" for c in p) for p in parts)


def _judge_agreement(res: dict, judge: str) -> str:
    """The judge's measured agreement with human labels on rows it was not fitted on, as
    'accuracy (set)', or 'not measured'."""
    a = ((res.get("judges") or {}).get(judge) or {}).get("agreement")
    if not a or a.get("accuracy") is None:
        return "not measured"
    return f"{a['accuracy']:.2f} ({a['set']}, n={a['n']})"


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


# --------------------------------------------------------------------------- figures
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _legend_below(fig, handles, labels=None, ncol: int = 4) -> None:
    """The legend under the axes (figures use constrained layout), never over bars or curves."""
    if not handles:
        return
    kw = {"labels": labels} if labels is not None else {}
    fig.legend(handles=handles, loc="outside lower center", ncol=min(ncol, len(handles)), fontsize=8,
               frameon=False, **kw)


def _group_patches(models):
    from matplotlib.patches import Patch

    return [Patch(color=c, label=g) for g, c in COLORS.items() if any(_group(m) == g for m in models)]


def _fig_asr(evals: dict[str, dict], out: Path, set_name: str, judge: str, labels: dict[str, str]) -> Path | None:
    """ASR per setting for one eval set and judge: one bar per format, 95% Wilson intervals."""
    plt = _plt()
    from matplotlib.patches import Patch

    models, formats = _order(evals), _formats(evals)
    cells = {(m, f): _entry(evals[m], set_name, judge, f) for m in models for f in formats}
    if not any(cells.values()):
        return None
    width = 0.8 / len(formats)
    fig, ax = plt.subplots(figsize=(max(6.0, len(models) * 0.5 * (1 + len(formats))), 4.4), layout="constrained")
    for k, f in enumerate(formats):
        xs = [i + (k - (len(formats) - 1) / 2) * width for i in range(len(models))]
        es = [cells[(m, f)] for m in models]
        vals = [e["value"] if e else 0.0 for e in es]
        err = [[e["value"] - e["ci_low"] if e and e.get("ci_low") is not None else 0 for e in es],
               [e["ci_high"] - e["value"] if e and e.get("ci_high") is not None else 0 for e in es]]
        ax.bar(xs, vals, width=width, yerr=err, capsize=3, color=[COLORS[_group(m)] for m in models],
               alpha=1.0 - 0.6 * k / max(len(formats), 1), edgecolor="black", linewidth=0.3)
    ax.set_xticks(list(range(len(models))), [labels.get(m, m) for m in models], rotation=30, ha="right")
    ax.set_ylabel(f"attack success rate ({judge})")
    ax.set_ylim(0, 1)
    shades = [Patch(facecolor="#555555", alpha=1.0 - 0.6 * k / len(formats), label=f) for k, f in enumerate(formats)]
    _legend_below(fig, _group_patches(models) + (shades if len(formats) > 1 else []))
    ax.set_title(f"Jailbreak ASR on {set_name} per setting (lower is safer; 95% Wilson CI)", fontsize=10)
    return save_png(fig, out / f"asr_{_slug(set_name, judge)}.png")


def _fig_forest(comparisons: list[fnd.Comparison], labels: dict[str, str], judge: str, out: Path) -> Path | None:
    """ASR(setting) - ASR(sft) with its paired 95% interval, one row per comparison; filled markers
    where the McNemar test finds a change at the 5% level."""
    rows = [c for c in comparisons if c.asr["interval"]]
    if not rows:
        return None
    plt = _plt()
    several = len({(c.set, c.format) for c in rows}) > 1
    fig, ax = plt.subplots(figsize=(7.5, 1.4 + 0.34 * len(rows)), layout="constrained")
    for i, c in enumerate(rows):
        y = len(rows) - 1 - i
        d, (lo, hi) = c.asr["difference"], c.asr["interval"]
        color = COLORS[_group(c.setting)]
        filled = c.verdict != fnd.NO_CHANGE
        ax.errorbar([d], [y], xerr=[[d - lo], [hi - d]], fmt="o", color=color, capsize=3,
                    markerfacecolor=color if filled else "white")
    names = [labels.get(c.setting, c.setting) + (f"  ({c.set} / {c.format})" if several else "") for c in rows]
    ax.set_yticks(list(range(len(rows))), list(reversed(names)), fontsize=8)
    ax.axvline(0, color="grey", ls=":", lw=1)
    ax.set_xlim(-1, 1)
    ax.set_xlabel(f"ASR(setting) − ASR(sft) under {judge}, 95% paired interval (Newcombe)")
    ax.set_title("Change in attack success rate vs sft (filled: exact McNemar p < 0.05)", fontsize=10)
    return save_png(fig, out / "findings_asr_change.png")


def _fig_separability(ranking: list[dict], labels: dict[str, str], family: str, out: Path) -> Path | None:
    """Probe accuracy per setting, highest at the top, with Wilson intervals."""
    if not ranking:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 1.6 + 0.34 * len(ranking)), layout="constrained")
    for i, r in enumerate(ranking):
        y = len(ranking) - 1 - i
        err = ([[r["accuracy"] - r["ci_low"]], [r["ci_high"] - r["accuracy"]]]
               if r.get("ci_low") is not None else None)
        ax.barh([y], [r["accuracy"]], xerr=err, capsize=3, color=COLORS[_group(r["setting"])], height=0.6)
    ax.set_yticks(list(range(len(ranking))), [labels.get(r["setting"], r["setting"]) for r in reversed(ranking)])
    ax.axvline(0.5, color="grey", ls=":", lw=1)
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"chosen-vs-rejected probe accuracy ({family}; 0.5 = chance)")
    ax.set_title("Separability ranking (95% Wilson CI over pairs)", fontsize=10)
    _legend_below(fig, _group_patches([r["setting"] for r in ranking]))
    return save_png(fig, out / "separability_ranking.png")


def _fig_training(rd: RunDir, settings: list[str], out: Path, labels: dict[str, str]) -> Path | None:
    """Two panels of one figure: DPO loss and reward margin per logged step, one line per setting."""
    loss = {s: c for s in settings if (c := _curve(rd, s, "loss"))}
    margin = {s: c for s in settings if (c := _curve(rd, s, "rewards/margins"))}
    if not loss and not margin:
        return None
    plt = _plt()
    fig, (ax_l, ax_m) = plt.subplots(1, 2, figsize=(10, 4.4), layout="constrained")
    lines = {}
    for ax, curves in ((ax_l, loss), (ax_m, margin)):
        for s in _order(curves):
            c = curves[s]
            # Few settings: the group colours; more: one colour each (a group holds up to six).
            color = COLORS[_group(s)] if len(curves) < 3 else None
            (line,) = ax.plot([p[0] for p in c], [p[1] for p in c], color=color,
                              linestyle="-" if s in SELF_GENERATED else "--", marker="." if len(c) < 20 else None)
            lines.setdefault(s, line)
        ax.set_xlabel("training step")
    ax_l.set_ylabel("DPO loss")
    ax_l.set_title("Training loss (fast drop = easy pairs)", fontsize=10)
    ax_m.set_ylabel("reward margin (chosen − rejected)")
    ax_m.set_title("Reward margin", fontsize=10)
    order = _order(lines)
    _legend_below(fig, [lines[s] for s in order], [labels.get(s, s) for s in order])
    return save_png(fig, out / "training_curves.png")


def _fig_sep_vs_asr(sep: dict[str, float], family: str, evals: dict[str, dict], judge: str, out: Path,
                    labels: dict[str, str]) -> Path | None:
    """Separability vs ASR for one judge: one marker series per (eval set, format)."""
    plt = _plt()
    from matplotlib.lines import Line2D

    series = [(s, f) for s, j in _combos(evals) if j == judge for f in _formats(evals)]
    markers = "osD^vP*X<>"
    fig, ax = plt.subplots(figsize=(6.5, 4.8), layout="constrained")
    handles = []
    for k, (set_name, fmt) in enumerate(series):
        pts = [(s, acc, e["value"]) for s, acc in sep.items() if (e := _entry(evals.get(s, {}), set_name, judge, fmt))]
        for s, x, y in pts:
            ax.scatter(x, y, color=COLORS[_group(s)], marker=markers[k % len(markers)])
            ax.annotate(labels.get(s, s), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        if pts:
            handles.append(Line2D([], [], color="#444444", marker=markers[k % len(markers)], linestyle="",
                                  label=f"{set_name} / {fmt}"))
    if not handles:
        plt.close(fig)
        return None
    ax.set_xlabel(f"chosen-vs-rejected separability ({family})")
    ax.set_ylabel(f"ASR ({judge})")
    ax.set_title(f"Separability vs attack success rate ({judge})", fontsize=10)
    _legend_below(fig, handles + _group_patches(list(sep)))
    return save_png(fig, out / f"separability_vs_asr_{_slug(judge)}.png")


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


def _comparison_view(c: fnd.Comparison, label: str, refusals: dict | None = None) -> dict:
    """Text for one comparison (n may be 0 when every verdict was excluded); `refusals`: the
    setting's paired over-refusal rates on the benign prompts, if evaluated."""
    a, d, o = c.asr, c.degenerate, refusals
    ci = a["interval"]
    return {"label": label, "n": a["n"], "asr": _2(a["rate_first"]), "asr_sft": _2(a["rate_second"]),
            "diff": "n/a" if a["difference"] is None else _signed(a["difference"]),
            "ci": f"[{_signed(ci[0])}, {_signed(ci[1])}]" if ci else "",
            "only_sft": a["c"], "only_setting": a["b"], "p": _p(a["p_value"]), "p_eq": _p_eq(a["p_value"]),
            "verdict": c.verdict,
            "broken": c.broken, "degenerate_rose": c.degenerate_rose, "n_unpaired": c.n_unpaired,
            "deg": _2(d["rate_first"]) if d else "", "deg_sft": _2(d["rate_second"]) if d else "",
            "deg_p": _p(d["p_value"]) if d else "", "deg_p_eq": _p_eq(d["p_value"]) if d else "",
            "ref": _2(o["rate_first"]) if o else "", "ref_sft": _2(o["rate_second"]) if o else "",
            "ref_n": o["n"] if o else 0, "ref_p_eq": _p_eq(o["p_value"]) if o else "",
            "refusals_rose": bool(o and o["p_value"] < fnd.ALPHA and o["difference"] > 0)}


def _short_verdict(v: str) -> str:
    return "no change (p ≥ 0.05)" if v == fnd.NO_CHANGE else v


def _findings_groups(ctx: Context, f: fnd.Findings) -> list[dict]:
    groups: dict[tuple[str, str], list[fnd.Comparison]] = {}
    for c in f.comparisons:
        groups.setdefault((c.set, c.format), []).append(c)
    out = []
    for (set_name, fmt), cs in groups.items():
        cs = [c for s in _order({c.setting for c in cs}) for c in cs if c.setting == s]
        views = [_comparison_view(c, ctx.label(c.setting), f.over_refusal.get(c.setting)) for c in cs]
        # The judge's agreement is stated once above the table (one judge for every row).
        rows = [[v["label"], v["n"], v["asr"], v["asr_sft"], f"{v['diff']} {v['ci']}",
                 f"{v['only_sft']} / {v['only_setting']}", v["p"],
                 _short_verdict(v["verdict"]) + (", broken, not safer" if v["broken"] else ""),
                 f"{v['deg_sft']} → {v['deg']} ({v['deg_p_eq']})" if c.degenerate else "",
                 f"{v['ref_sft']} → {v['ref']} ({v['ref_p_eq']})" if v["ref_n"] else ""]
                for v, c in zip(views, cs)]
        out.append({"title": f"{set_name} / {fmt}", "comparisons": views, "table": table(
            ["setting", "prompts", "ASR", "ASR sft", "difference [95% CI]", "harmful only: sft / setting",
             "McNemar p", "verdict", "degenerate share sft → setting", "benign refusals sft → setting"], rows)})
    return out


def _paper(setting: str) -> str:
    v = paper_numbers.paper_asr(setting)
    return "" if v is None else f"{v:.2f}"


def _orientation(ctx: Context, judge: str) -> dict | None:
    cols = [(s, fmt) for s, j in _combos(ctx.evals) if j == judge for fmt in _formats(ctx.evals)
            if any(_entry(r, s, judge, fmt) for r in ctx.evals.values())]
    models = _order(ctx.evals)
    if not cols or not models:
        return None
    rows = [[ctx.label(m), *[_rate(_entry(ctx.evals[m], s, judge, fmt)) for s, fmt in cols],
             _judge_agreement(ctx.evals[m], judge), _paper(m)] for m in models]
    return table(["setting", *[f"ASR {s} / {fmt}" for s, fmt in cols], "judge agreement (held out)",
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
    fig = _fig_separability(ranking, ctx.labels, family, ctx.out) if ranking else None
    first = (f.comparisons[0].set, f.comparisons[0].format) if f.comparisons else None
    change = {c.setting: f"{_signed(c.asr['difference'])} ({c.verdict})"
              for c in f.comparisons if (c.set, c.format) == first and c.asr["difference"] is not None}
    rows = [[i + 1, ctx.label(r["setting"]), _group(r["setting"]), _acc(r), r["feature"], r["n_pairs"],
             change.get(r["setting"], "")] for i, r in enumerate(ranking)]
    header = ["rank", "setting", "group", "probe accuracy [95% CI]", "feature", "pairs",
              f"ASR change vs sft ({first[0]} / {first[1]})" if first else "ASR change vs sft"]
    return {"table": table(header, rows), "family": family or "no figure", "rule": _ranking_rule(probe, family),
            "notes": notes, "figure": fig.name if fig else None}, fig


def _section_findings(ctx: Context) -> Section:
    f = fnd.paired_findings(ctx.cfg, ctx.rd, ctx.evals, [s for s in _order(ctx.evals) if s != fnd.SFT])
    forest = _fig_forest(f.comparisons, ctx.labels, f.judge, ctx.out) if f.comparisons else None
    sep, sep_fig = _separability_view(ctx, f)
    training = _fig_training(ctx.rd, list(ctx.cfg.pairs.settings), ctx.out, ctx.labels)
    costs = fnd.setting_costs(ctx.cfg, ctx.rd, list(ctx.cfg.pairs.settings))
    cost = table(["setting", "models drawn on", "responses", "tokens generated", "DPO steps", "training seconds"],
                 [[ctx.label(c["setting"]), ", ".join(c["models"]) or "(human only)", c["responses"], c["tokens"],
                   c["steps"], None if c["train_seconds"] is None else f"{c['train_seconds']:.1f}"]
                  for c in sorted(costs, key=lambda c: _order([c["setting"] for c in costs]).index(c["setting"]))]
                 ) if costs else None
    class_judge = next((r["answer_classes"].get("judge") for r in ctx.evals.values() if r.get("answer_classes")), None)
    unparsed = ("count as not harmful (the authors' denominator)" if ctx.cfg.evaluate.safety.unparsed == "count"
                else "are left out")
    card = ctx.evals.get(fnd.SFT) or next(iter(ctx.evals.values()), {})
    agreement = _judge_agreement(card, f.judge) if f.judge else ""
    body = render("sections/findings.md.j2", judge=f.judge, judge_kind=f.judge_kind or "unknown kind",
                  agreement=agreement, class_judge=class_judge, unparsed=unparsed, missing=f.missing,
                  groups=_findings_groups(ctx, f), forest=forest.name if forest else None,
                  n_tests=len(f.comparisons), orientation=_orientation(ctx, f.judge) if f.judge else None,
                  paper_model=paper_numbers.MODEL, citation=paper_numbers.CITATION, separability=sep,
                  training=training.name if training else None, cost=cost,
                  eval_seconds=fnd.evaluate_seconds(ctx.rd), n_models=len(ctx.evals),
                  tail=[_reward_line(_pairs_stats(ctx.rd).get("reward_agreement")), ctx.note or ""])
    return Section("Findings", body, [p for p in (forest, sep_fig, training) if p])


def _section_safety(ctx: Context) -> Section | None:
    evals = ctx.evals
    if not evals:
        return None
    rows = [[ctx.label(m), _group(m), e["set"], e.get("format", "chat"), e["judge"], e["value"], _ci(e), e["n"],
             e.get("unparsed", 0), _judge_agreement(evals[m], e["judge"])]
            for m in _order(evals) for e in _asr_entries(evals[m])]
    figs = [p for s, j in _combos(evals) if (p := _fig_asr(evals, ctx.out, s, j, ctx.labels))]
    body = render("sections/basic.md.j2", intro=None, notes=[ctx.note], figures=_figs(
        *((p, f"ASR ({p.stem[4:]})") for p in figs)), table=table(
        ["model", "group", "set", "format", "judge", "ASR", "95% CI", "n", "unparsed", "judge agreement (held out)"],
        rows))
    return Section("Jailbreak attack success rate", body, figs)


def _section_answer_classes(ctx: Context) -> Section | None:
    rows = [[ctx.label(m), key, a["shares"].get("refusal"), a["shares"].get("harmful_compliance"),
             a["shares"].get("degenerate_or_off_topic"), a["n"], ac.get("judge")]
            for m in _order(ctx.evals) for ac in [ctx.evals[m].get("answer_classes") or {}]
            for key, a in (ac.get("safety") or {}).items()]
    if not rows:
        return None
    return Section("What the answers are (answer classes)", render(
        "sections/basic.md.j2", intro=None, figures=[], table=table(
            ["model", "set/format", "refusal", "harmful compliance", "degenerate or off-topic", "n", "judge"], rows),
        notes=["Degenerate: repeated word-trigram rate >= 0.5 or (nearly) empty; off-topic: the judge finds the "
               "answer neither harmful nor a refusal."]))


def _section_over_refusal(ctx: Context) -> Section | None:
    rows = [[ctx.label(m), r["over_refusal"]["value"], _ci(r["over_refusal"]), r["over_refusal"]["n"]]
            for m in _order(ctx.evals) if (r := ctx.evals[m]).get("over_refusal")]
    if not rows:
        return None
    return Section("Over-refusal on benign prompts", render(
        "sections/basic.md.j2", intro=None, figures=[], notes=[ctx.note],
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
            for m in _order(evals)]
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
    for judge in dict.fromkeys(j for _, j in _combos(ctx.evals)):
        if sep and (p := _fig_sep_vs_asr(sep, family, ctx.evals, judge, ctx.out, ctx.labels)):
            figs.append(p)
            pics.append({"path": p.name, "alt": f"separability vs ASR ({judge})", "caption": None})
    settings = probe["settings"]
    rows = [[ctx.label(s), _group(s), _acc(r.get("hidden")), (r.get("hidden") or {}).get("feature"),
             _acc(r.get("embedding")), _acc(r.get("surface")), _acc(r.get("length")), r.get("n_pairs")]
            for s, r in ((s, settings[s]) for s in _order(settings))]
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
        m, loss = _curve(ctx.rd, s, "rewards/margins"), _curve(ctx.rd, s, "loss")
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
    m = ctx.rd.manifest()
    manifest = json.dumps({k: m.get(k) for k in ("synthpref_version", "git_commit", "seed", "packages")}, indent=2)
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
    return {"report": str(out / "report.html"), "figures": [p.name for p in figs]}
