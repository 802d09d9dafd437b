"""Report: report.md and a self-contained report.html (figures embedded), figures also as PNG.

Contents: the paper-style figure (ASR per setting, multi-model vs self-generated settings marked,
95% intervals), the general-benchmark table, separability vs ASR, reward-margin curves per
setting, data statistics, and the exact config and package versions.
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


def _fig_asr(evals: dict[str, dict], out: Path, judge: str, labels: dict[str, str] | None = None) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = _order(list(evals))
    rows = []
    for m in models:
        hits = [e for e in _asr_entries(evals[m]) if e["judge"] == judge and e.get("format", "chat") == "chat"]
        if hits and hits[0]["value"] is not None:
            e = hits[0]
            rows.append((m, e["value"], e["ci_low"], e["ci_high"]))
    if not rows:
        return None
    colors = {"baseline": "#888888", "multi-model": "#d95f02", "self-generated": "#1b9e77", "custom": "#7570b3"}
    fig, ax = plt.subplots(figsize=(max(6, len(rows) * 0.9), 3.8))
    xs = range(len(rows))
    vals = [r[1] for r in rows]
    err = [[r[1] - r[2] for r in rows], [r[3] - r[1] for r in rows]]
    ax.bar(xs, vals, yerr=err, capsize=4, color=[colors[_group(r[0])] for r in rows])
    ax.set_xticks(list(xs), [(labels or {}).get(r[0], r[0]) for r in rows], rotation=30, ha="right")
    ax.set_ylabel(f"attack success rate ({judge})")
    ax.set_ylim(0, 1)
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=c, label=g) for g, c in colors.items() if any(_group(r[0]) == g for r in rows)],
              loc="upper right", fontsize=8)
    ax.set_title("Jailbreak ASR per preference-data setting (lower is safer; 95% Wilson CI)")
    fig.tight_layout()
    path = out / f"asr_{judge}.png"
    return save_png(fig, path)


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
    import matplotlib.pyplot as plt

    pts = []
    for s, acc in sep.items():
        hits = [e for e in _asr_entries(evals.get(s, {})) if e["judge"] == judge and e.get("format", "chat") == "chat"]
        if hits and hits[0]["value"] is not None:
            pts.append((s, acc, hits[0]["value"]))
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for s, x, y in pts:
        ax.scatter(x, y, color="#1b9e77" if s in SELF_GENERATED else "#d95f02")
        ax.annotate((labels or {}).get(s, s), (x, y), fontsize=8, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("chosen-vs-rejected linear separability (probe accuracy)")
    ax.set_ylabel(f"ASR ({judge})")
    ax.set_title("Separability vs attack success rate")
    fig.tight_layout()
    path = out / "separability_vs_asr.png"
    return save_png(fig, path)


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


def build_sections(cfg: StudyConfig, rd: RunDir, out: Path) -> tuple[list[tuple[str, str]], list[Path]]:
    """[(title, markdown body)], [figure paths]."""
    evals = _load_eval(rd)
    judges = []
    for res in evals.values():
        for e in _asr_entries(res):
            if e["judge"] not in judges:
                judges.append(e["judge"])
    figs: list[Path] = []
    sections: list[tuple[str, str]] = []
    # Settings built from a stand-in model carry a dagger wherever they are named.
    labels = {s: setting_label(cfg, s) for s in [*cfg.pairs.settings, *evals]}
    note = footnote(cfg, list(labels))

    # 1. safety
    if evals:
        rows = []
        for m in _order(list(evals)):
            for e in _asr_entries(evals[m]):
                rows.append([labels.get(m, m), _group(m), e["set"], e.get("format", "chat"), e["judge"], e["value"],
                             _ci(e), e["n"], e.get("unparsed", 0), _judge_agreement(evals[m], e["judge"])])
        body = _md_table(["model", "group", "set", "format", "judge", "ASR", "95% CI", "n", "unparsed",
                          "judge agreement (held out)"], rows)
        if note:
            body += f"\n\n{note}"
        for j in judges:
            p = _fig_asr(evals, out, j, labels)
            if p:
                figs.append(p)
                body += f"\n\n![ASR ({j})]({p.name})"
        sections.append(("Jailbreak attack success rate", body))
        crows = []
        for m in _order(list(evals)):
            ac = evals[m].get("answer_classes") or {}
            for key, a in (ac.get("safety") or {}).items():
                sh = a["shares"]
                crows.append([labels.get(m, m), key, sh.get("refusal"), sh.get("harmful_compliance"),
                              sh.get("degenerate_or_off_topic"), a["n"], ac.get("judge")])
        if crows:
            sections.append(("What the answers are (answer classes)", _md_table(
                ["model", "set/format", "refusal", "harmful compliance", "degenerate or off-topic", "n", "judge"], crows)
                + "\n\nDegenerate: repeated word-trigram rate >= 0.5 or (nearly) empty; off-topic: the judge finds "
                "the answer neither harmful nor a refusal."))
        ref_rows = [[m, r["over_refusal"]["value"], _ci(r["over_refusal"]),
                     r["over_refusal"]["n"]] for m, r in ((m, evals[m]) for m in _order(list(evals)))
                    if r.get("over_refusal")]
        if ref_rows:
            sections.append(("Over-refusal on benign prompts", _md_table(["model", "refusal rate", "95% CI", "n"], ref_rows)))
        # general
        tasks: list[str] = []
        for r in evals.values():
            for t in (r.get("general") or {}):
                if t not in tasks:
                    tasks.append(t)
        if tasks:
            grows = []
            for m in _order(list(evals)):
                g = evals[m].get("general") or {}
                grows.append([m] + [(g.get(t) or {}).get("value") if "skipped" not in (g.get(t) or {}) else "skipped"
                                    for t in tasks])
            notes = sorted({f"- {t}: {v['skipped']}" for r in evals.values() for t, v in (r.get("general") or {}).items()
                            if isinstance(v, dict) and "skipped" in v})
            sections.append(("General ability (lm-evaluation-harness)",
                             _md_table(["model", *tasks], grows) + ("\n\n" + "\n".join(notes) if notes else "")))

    # 2. separability
    sep = _separability(rd)
    if sep:
        probe = read_json(rd.path("probe", "results.json"))
        prow = []
        for s, r in (probe.get("settings") or {}).items():
            best = r.get("best") or {}
            prow.append([labels.get(s, s), _group(s), best.get("accuracy"), best.get("feature"),
                         (r.get("embedding") or {}).get("accuracy"), (r.get("surface") or {}).get("accuracy"),
                         r.get("n_pairs")])
        body = _md_table(["setting", "group", "best hidden-state acc.", "where", "embedding acc.", "surface acc.", "pairs"], prow)
        for w in probe.get("warnings", []):
            body += f"\n\n> warning: {w}"
        if (rd.path("probe", "layers.png")).exists():
            with atomic_open(out / "probe_layers.png", "wb") as f:
                f.write(rd.path("probe", "layers.png").read_bytes())
            figs.append(out / "probe_layers.png")
            body += "\n\n![probe accuracy per layer](probe_layers.png)"
        if judges:
            p = _fig_sep_vs_asr(sep, evals, judges[0], out, labels)
            if p:
                figs.append(p)
                body += f"\n\n![separability vs ASR]({p.name})"
        sections.append(("Chosen-vs-rejected separability (reward-hacking probe)", body))

    # 3. training dynamics
    p = _fig_margins(rd, cfg.pairs.settings, out, labels)
    if p:
        figs.append(p)
        trows = []
        for s in cfg.pairs.settings:
            c = _margins(rd, s)
            if c:
                trows.append([labels.get(s, s), c[0][1], c[-1][1], len(c)])
        sections.append(("Training dynamics", _md_table(["setting", "first margin", "last margin", "logged steps"], trows)
                         + f"\n\n![reward margins]({p.name})"))

    # 4. data statistics
    if rd.path("pairs", "stats.json").exists():
        st = read_json(rd.path("pairs", "stats.json"))
        srows = []
        for s, v in (st.get("settings") or st).items():
            if not isinstance(v, dict):
                continue
            srows.append([labels.get(s, s), v.get("pairs"), json.dumps(v.get("dropped", {})), (v.get("margin") or {}).get("mean"),
                          (v.get("chosen_chars") or {}).get("mean"), (v.get("rejected_chars") or {}).get("mean")])
        sections.append(("Preference data", _md_table(["setting", "pairs", "dropped", "mean margin", "chosen chars",
                                                       "rejected chars"], srows) + (f"\n\n{note}" if note else "")
                         + _reward_line(st.get("reward_agreement"))))

    # 5. provenance
    m = rd.manifest()
    prov = "```json\n" + json.dumps({k: m.get(k) for k in ("synthpref_version", "git_commit", "seed", "packages")},
                                    indent=2) + "\n```\n\n```yaml\n" + dump_config(cfg) + "```"
    sections.append(("Config and versions", prov))
    return sections, figs


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
