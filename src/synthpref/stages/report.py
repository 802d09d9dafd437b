"""Report: report.md and a self-contained report.html (figures embedded), figures also as PNG.

Contents: the paper-style figure for every eval set x judge (ASR per setting, one bar per format,
multi-model vs self-generated settings marked, 95% Wilson intervals), the general-benchmark table
(intervals: Wilson for accuracies, value +- z*stderr for means such as TruthfulQA-MC2), separability
vs ASR per judge (every set x format), reward-margin curves per setting, generated responses
(with API refusals), data statistics, and the exact config and package versions.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from ..config import StudyConfig, dump_config
from ..figures import save_png
from ..rundir import RunDir, atomic_open, read_json, write_text
from ..standins import footnote, setting_label

# How the paper groups the settings on its x-axis: pairs whose two sides come from different
# sources ("multi-model") vs. pairs the target generates itself.
MULTI_MODEL = {"original", "hc_self", "gpt4o_self", "stronger_self", "peer_rm", "all_rm"}
SELF_GENERATED = {"self_rm"}
PAPER_ORDER = ["sft", "hc_self", "gpt4o_self", "stronger_self", "peer_rm", "all_rm", "original", "self_rm"]


def _group(model: str) -> str:
    if model == "sft":
        return "baseline"
    return "self-generated" if model in SELF_GENERATED else "multi-model" if model in MULTI_MODEL else "custom"


def _order(models: list[str]) -> list[str]:
    return sorted(models, key=lambda m: (PAPER_ORDER.index(m) if m in PAPER_ORDER else len(PAPER_ORDER), m))


def _load_eval(rd: RunDir) -> dict[str, dict]:
    out = {}
    for f in sorted(rd.path("eval").glob("*/results.json")):
        out[f.parent.name] = read_json(f)
    return out


def _asr_entries(res: dict) -> list[dict]:
    """Flatten safety metrics: [{judge, set, format, value, ci_low, ci_high, n}]."""
    out = []
    for e in res.get("safety", []):
        out.append(e)
    return out


def _margins(rd: RunDir, setting: str) -> list[tuple[int, float]]:
    f = rd.path("train", setting, "metrics.jsonl")
    if not f.exists():
        return []
    pts = []
    for line in f.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue  # metrics.jsonl is appended as training runs; a kill can tear its last line
        if "rewards/margins" in r:
            pts.append((r.get("step", len(pts)), r["rewards/margins"]))
    return pts


COLORS = {"baseline": "#888888", "multi-model": "#d95f02", "self-generated": "#1b9e77", "custom": "#7570b3"}


def _combos(evals: dict[str, dict]) -> list[tuple[str, str]]:
    """Every (eval set, judge) pair present in any model's results, in first-seen order."""
    seen: dict[tuple[str, str], None] = {}
    for res in evals.values():
        for e in _asr_entries(res):
            seen.setdefault((e["set"], e["judge"]), None)
    return list(seen)


def _formats(evals: dict[str, dict]) -> list[str]:
    seen: dict[str, None] = {}
    for res in evals.values():
        for e in _asr_entries(res):
            seen.setdefault(e.get("format", "chat"), None)
    return list(seen)


def _entry(res: dict, set_name: str, judge: str, fmt: str) -> dict | None:
    for e in _asr_entries(res):
        if e["set"] == set_name and e["judge"] == judge and e.get("format", "chat") == fmt and e["value"] is not None:
            return e
    return None


def _slug(*parts: str) -> str:
    return "_".join("".join(c if c.isalnum() or c in "-." else "-" for c in p) for p in parts)


def _fig_asr(evals: dict[str, dict], out: Path, set_name: str, judge: str,
             labels: dict[str, str] | None = None) -> Path | None:
    """ASR per setting for one eval set and judge: one bar per format, 95% Wilson intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    models, formats = _order(list(evals)), _formats(evals)
    cells = {(m, f): _entry(evals[m], set_name, judge, f) for m in models for f in formats}
    if not any(cells.values()):
        return None
    width = 0.8 / len(formats)
    fig, ax = plt.subplots(figsize=(max(6, len(models) * 0.5 * (1 + len(formats))), 3.8))
    for k, f in enumerate(formats):
        xs = [i + (k - (len(formats) - 1) / 2) * width for i in range(len(models))]
        es = [cells[(m, f)] for m in models]
        vals = [e["value"] if e else 0.0 for e in es]
        err = [[e["value"] - e["ci_low"] if e and e.get("ci_low") is not None else 0 for e in es],
               [e["ci_high"] - e["value"] if e and e.get("ci_high") is not None else 0 for e in es]]
        ax.bar(xs, vals, width=width, yerr=err, capsize=3, color=[COLORS[_group(m)] for m in models],
               alpha=1.0 - 0.6 * k / max(len(formats), 1), edgecolor="black", linewidth=0.3, label=f)
    ax.set_xticks(list(range(len(models))), [(labels or {}).get(m, m) for m in models], rotation=30, ha="right")
    ax.set_ylabel(f"attack success rate ({judge})")
    ax.set_ylim(0, 1)
    groups = [Patch(color=c, label=g) for g, c in COLORS.items() if any(_group(m) == g for m in models)]
    shades = [Patch(facecolor="#555555", alpha=1.0 - 0.6 * k / len(formats), label=f) for k, f in enumerate(formats)]
    ax.legend(handles=groups + (shades if len(formats) > 1 else []), loc="upper right", fontsize=7)
    ax.set_title(f"Jailbreak ASR on {set_name} per setting (lower is safer; 95% Wilson CI)", fontsize=10)
    fig.tight_layout()
    return save_png(fig, out / f"asr_{_slug(set_name, judge)}.png")


def _fig_margins(rd: RunDir, settings: list[str], out: Path, labels: dict[str, str] | None = None) -> Path | None:
    import matplotlib.pyplot as plt

    curves = {s: _margins(rd, s) for s in settings}
    curves = {s: c for s, c in curves.items() if c}
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for s, c in curves.items():
        ax.plot([p[0] for p in c], [p[1] for p in c], label=(labels or {}).get(s, s),
                linestyle="-" if s in SELF_GENERATED else "--")
    ax.set_xlabel("training step")
    ax.set_ylabel("DPO reward margin (chosen - rejected)")
    ax.set_title("Reward-margin growth per setting (fast growth = easy shortcut)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "reward_margins.png"
    return save_png(fig, path)


def _separability(rd: RunDir) -> dict[str, float]:
    """Best probe accuracy per setting (over hidden-state layers/poolings)."""
    f = rd.path("probe", "results.json")
    if not f.exists():
        return {}
    res = read_json(f)
    out = {}
    for setting, r in (res.get("settings") or {}).items():
        best = r.get("best") or {}
        if "accuracy" in best:
            out[setting] = best["accuracy"]
    return out


def _fig_sep_vs_asr(sep: dict[str, float], evals: dict[str, dict], judge: str, out: Path,
                    labels: dict[str, str] | None = None) -> Path | None:
    """Separability vs ASR for one judge: one marker series per (eval set, format)."""
    import matplotlib.pyplot as plt

    series = [(s, f) for s, j in _combos(evals) if j == judge for f in _formats(evals)]
    markers = "osD^vP*X<>"
    fig, ax = plt.subplots(figsize=(6, 4.2))
    drawn = 0
    for k, (set_name, fmt) in enumerate(series):
        pts = [(s, acc, e["value"]) for s, acc in sep.items() if (e := _entry(evals.get(s, {}), set_name, judge, fmt))]
        for s, x, y in pts:
            ax.scatter(x, y, color=COLORS[_group(s)], marker=markers[k % len(markers)],
                       label=f"{set_name} / {fmt}" if s == pts[0][0] else None)
            ax.annotate((labels or {}).get(s, s), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        drawn += len(pts)
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("chosen-vs-rejected linear separability (probe accuracy)")
    ax.set_ylabel(f"ASR ({judge})")
    ax.set_title(f"Separability vs attack success rate ({judge})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_png(fig, out / f"separability_vs_asr_{_slug(judge)}.png")


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
    return (f"\n\nReward scorer `{ra['scorer']}` ({ra['kind']}): pairwise accuracy {ra['pairwise_accuracy']:.3f} on "
            f"{ra['pairs']} human preference pairs ({ra['pairs_set']}; {ra['pairs_how']}); harm accuracy "
            f"{ra['harm_accuracy']:.3f} ({ra['harm_how']}).")


def _ci(e: dict) -> str:
    """'[lo, hi]', or 'n/a' when every judgement was unparseable."""
    if e.get("ci_low") is None or e.get("ci_high") is None:
        return "n/a"
    return f"[{e['ci_low']:.2f}, {e['ci_high']:.2f}]"


def _md_table(header: list[str], rows: list[list]) -> str:
    def fmt(v):
        return f"{v:.3f}" if isinstance(v, float) else ("" if v is None else str(v))

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- sections
# Each section function returns (title, markdown body, figures) or None when it has nothing to show.
Section = tuple[str, str, list[Path]]


def _section_safety(evals: dict[str, dict], out: Path, labels: dict[str, str], note: str) -> Section | None:
    if not evals:
        return None
    rows = [[labels.get(m, m), _group(m), e["set"], e.get("format", "chat"), e["judge"], e["value"], _ci(e), e["n"],
             e.get("unparsed", 0), _judge_agreement(evals[m], e["judge"])]
            for m in _order(list(evals)) for e in _asr_entries(evals[m])]
    body = _md_table(["model", "group", "set", "format", "judge", "ASR", "95% CI", "n", "unparsed",
                      "judge agreement (held out)"], rows) + (f"\n\n{note}" if note else "")
    figs = [p for set_name, judge in _combos(evals) if (p := _fig_asr(evals, out, set_name, judge, labels))]
    body += "".join(f"\n\n![ASR ({p.stem[4:]})]({p.name})" for p in figs)
    return "Jailbreak attack success rate", body, figs


def _section_over_refusal(evals: dict[str, dict], labels: dict[str, str]) -> Section | None:
    rows = [[labels.get(m, m), r["over_refusal"]["value"], _ci(r["over_refusal"]), r["over_refusal"]["n"]]
            for m in _order(list(evals)) if (r := evals[m]).get("over_refusal")]
    return ("Over-refusal on benign prompts", _md_table(["model", "refusal rate", "95% CI", "n"], rows), []) if rows else None


def _section_answer_classes(evals: dict[str, dict], labels: dict[str, str]) -> Section | None:
    rows = [[labels.get(m, m), key, a["shares"].get("refusal"), a["shares"].get("harmful_compliance"),
             a["shares"].get("degenerate_or_off_topic"), a["n"], ac.get("judge")]
            for m in _order(list(evals)) for ac in [evals[m].get("answer_classes") or {}]
            for key, a in (ac.get("safety") or {}).items()]
    if not rows:
        return None
    return ("What the answers are (answer classes)", _md_table(
        ["model", "set/format", "refusal", "harmful compliance", "degenerate or off-topic", "n", "judge"], rows)
        + "\n\nDegenerate: repeated word-trigram rate >= 0.5 or (nearly) empty; off-topic: the judge finds "
        "the answer neither harmful nor a refusal.", [])


def _general_cell(v: dict | None):
    if not v:
        return None
    if "skipped" in v:
        return "skipped"
    if v.get("ci_low") is None:
        return v.get("value")
    return f"{v['value']:.3f} [{v['ci_low']:.2f}, {v['ci_high']:.2f}]"


def _section_general(evals: dict[str, dict]) -> Section | None:
    tasks = list(dict.fromkeys(t for r in evals.values() for t in (r.get("general") or {})))
    if not tasks:
        return None
    rows = [[m] + [_general_cell((evals[m].get("general") or {}).get(t)) for t in tasks] for m in _order(list(evals))]
    notes = sorted({f"- {t}: {v['skipped']}" for r in evals.values() for t, v in (r.get("general") or {}).items()
                    if isinstance(v, dict) and "skipped" in v})
    kinds = sorted({f"- {t}: {v.get('interval_kind') or 'wilson'} interval" for r in evals.values()
                    for t, v in (r.get("general") or {}).items() if isinstance(v, dict) and v.get("ci_low") is not None})
    body = _md_table(["model", *tasks], rows) + "\n\nValue [95% interval]. Accuracies are proportions (Wilson " \
        "interval); a mean that is not a proportion (TruthfulQA-MC2) gets value +- 1.96 x lm-eval's stderr."
    return "General ability (lm-evaluation-harness)", body + "".join("\n\n" + "\n".join(x) for x in (kinds, notes) if x), []


def _section_separability(rd: RunDir, evals: dict[str, dict], out: Path, labels: dict[str, str]) -> Section | None:
    sep = _separability(rd)
    if not sep:
        return None
    probe = read_json(rd.path("probe", "results.json"))
    rows = [[labels.get(s, s), _group(s), (r.get("best") or {}).get("accuracy"), (r.get("best") or {}).get("feature"),
             (r.get("embedding") or {}).get("accuracy"), (r.get("surface") or {}).get("accuracy"), r.get("n_pairs")]
            for s, r in (probe.get("settings") or {}).items()]
    body = _md_table(["setting", "group", "best hidden-state acc.", "where", "embedding acc.", "surface acc.", "pairs"], rows)
    body += "".join(f"\n\n> warning: {w}" for w in probe.get("warnings", []))
    figs = []
    if rd.path("probe", "layers.png").exists():
        with atomic_open(out / "probe_layers.png", "wb") as f:
            f.write(rd.path("probe", "layers.png").read_bytes())
        figs.append(out / "probe_layers.png")
        body += "\n\n![probe accuracy per layer](probe_layers.png)"
    for judge in dict.fromkeys(j for _, j in _combos(evals)):
        if p := _fig_sep_vs_asr(sep, evals, judge, out, labels):
            figs.append(p)
            body += f"\n\n![separability vs ASR ({judge})]({p.name})"
    return "Chosen-vs-rejected separability (reward-hacking probe)", body, figs


def _section_training(cfg: StudyConfig, rd: RunDir, out: Path, labels: dict[str, str]) -> Section | None:
    p = _fig_margins(rd, cfg.pairs.settings, out, labels)
    if not p:
        return None
    rows = [[labels.get(s, s), c[0][1], c[-1][1], len(c)] for s in cfg.pairs.settings if (c := _margins(rd, s))]
    return ("Training dynamics", _md_table(["setting", "first margin", "last margin", "logged steps"], rows)
            + f"\n\n![reward margins]({p.name})", [p])


def _section_responses(rd: RunDir) -> Section | None:
    """Per source model: responses generated, dropped, and refused by the API (content filter)."""
    if not rd.path("generate", "stats.json").exists():
        return None
    models = read_json(rd.path("generate", "stats.json")).get("models") or {}
    rows = [[m, s.get("generated"), s.get("dropped"), s.get("refused_by_api", 0)] for m, s in models.items()]
    return ("Generated responses", _md_table(["model", "responses", "dropped", "refused by API"], rows)
            + "\n\nResponses refused by the API are recorded (`refused_by_api`), dropped from the pairs and not "
              "requested again.", [])


def _section_data(rd: RunDir, labels: dict[str, str], note: str) -> Section | None:
    if not rd.path("pairs", "stats.json").exists():
        return None
    st = read_json(rd.path("pairs", "stats.json"))
    rows = [[labels.get(s, s), v.get("pairs"), json.dumps(v.get("dropped", {})), (v.get("margin") or {}).get("mean"),
             (v.get("chosen_chars") or {}).get("mean"), (v.get("rejected_chars") or {}).get("mean")]
            for s, v in (st.get("settings") or st).items() if isinstance(v, dict)]
    return ("Preference data", _md_table(["setting", "pairs", "dropped", "mean margin", "chosen chars",
                                          "rejected chars"], rows)
            + (f"\n\n{note}" if note else "") + _reward_line(st.get("reward_agreement")), [])


def _section_provenance(cfg: StudyConfig, rd: RunDir) -> Section:
    m = rd.manifest()
    prov = "```json\n" + json.dumps({k: m.get(k) for k in ("synthpref_version", "git_commit", "seed", "packages")},
                                    indent=2) + "\n```\n\n```yaml\n" + dump_config(cfg) + "```"
    return "Config and versions", prov, []


def build_sections(cfg: StudyConfig, rd: RunDir, out: Path) -> tuple[list[tuple[str, str]], list[Path]]:
    """[(title, markdown body)], [figure paths]: safety, answer classes, over-refusal, general ability, separability,
    training dynamics, generated responses, preference data, provenance (empty sections left out)."""
    evals = _load_eval(rd)
    # Settings built from a stand-in model carry a dagger wherever they are named.
    labels = {s: setting_label(cfg, s) for s in [*cfg.pairs.settings, *evals]}
    note = footnote(cfg, list(labels))
    found = [_section_safety(evals, out, labels, note), _section_answer_classes(evals, labels),
             _section_over_refusal(evals, labels), _section_general(evals), _section_separability(rd, evals, out, labels),
             _section_training(cfg, rd, out, labels), _section_responses(rd), _section_data(rd, labels, note),
             _section_provenance(cfg, rd)]
    found = [s for s in found if s]
    return [(title, body) for title, body, _ in found], [p for _, _, figs in found for p in figs]


def _to_html(title: str, sections: list[tuple[str, str]], out: Path) -> str:
    """Minimal markdown -> HTML for our own tables, images, quotes and code blocks."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
             "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px}"
             "th{background:#f3f3f3}img{max-width:100%;margin:1em 0}pre{background:#f6f6f6;padding:1em;overflow:auto;"
             "font-size:12px}blockquote{border-left:4px solid #d95f02;margin:1em 0;padding:.3em 1em;background:#fff6ee}"
             "</style></head><body>", f"<h1>{html.escape(title)}</h1>"]
    for name, body in sections:
        parts.append(f"<h2>{html.escape(name)}</h2>")
        lines = body.splitlines()
        i = 0
        while i < len(lines):
            line = lines[i]
            if line.startswith("```"):
                j = i + 1
                while j < len(lines) and not lines[j].startswith("```"):
                    j += 1
                parts.append("<pre>" + html.escape("\n".join(lines[i + 1:j])) + "</pre>")
                i = j + 1
                continue
            if line.startswith("|"):
                rows = []
                while i < len(lines) and lines[i].startswith("|"):
                    if not lines[i].startswith("|---"):
                        rows.append([c.strip() for c in lines[i].strip("|").split("|")])
                    i += 1
                parts.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in rows[0]) + "</tr>"
                             + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
                             + "</table>")
                continue
            if line.startswith("![") and "](" in line:
                src = line.split("](", 1)[1].rstrip(")")
                data = base64.b64encode((out / src).read_bytes()).decode()
                parts.append(f"<img alt='{html.escape(src)}' src='data:image/png;base64,{data}'>")
            elif line.startswith("> "):
                parts.append(f"<blockquote>{html.escape(line[2:])}</blockquote>")
            elif line.startswith("- "):
                parts.append(f"<li>{html.escape(line[2:])}</li>")
            elif line.strip():
                parts.append(f"<p>{html.escape(line)}</p>")
            i += 1
    parts.append("</body></html>")
    return "\n".join(parts)


def run(cfg: StudyConfig, rd: RunDir) -> dict:
    out = rd.stage("report")
    title = cfg.report.title or f"synthpref study '{cfg.name}'"
    sections, figs = build_sections(cfg, rd, out)
    md = f"# {title}\n\n" + "\n\n".join(f"## {n}\n\n{b}" for n, b in sections) + "\n"
    write_text(out / "report.md", md)
    write_text(out / "report.html", _to_html(title, sections, out))
    return {"report": str(out / "report.html"), "figures": [p.name for p in figs]}
