"""The report's figures, and saving any figure the way every run file is saved: atomically,
byte-reproducibly.

The settings are grouped and ordered as the paper's x-axis groups them (multi-model vs
self-generated pairs, `setting_group`, `paper_order`); the report's tables use the same grouping.
Each `fig_*` returns the PNG it wrote, or None when there is nothing to draw.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from . import findings as fnd
from .rundir import RunDir, atomic_open


def save_png(fig, path: Path, dpi: int = 110) -> Path:
    """Render to memory, then write by atomic rename (a kill never leaves a truncated PNG).
    No 'Software' metadata, so the same figure gives the same bytes across matplotlib builds."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    plt.close(fig)
    with atomic_open(path, "wb") as f:
        f.write(buf.getvalue())
    return path


# How the paper groups the settings on its x-axis: pairs whose two sides come from different
# sources ("multi-model") vs. pairs the target generates itself.
MULTI_MODEL = {"original", "hc_self", "gpt4o_self", "stronger_self", "peer_rm", "all_rm"}
SELF_GENERATED = {"self_rm"}
PAPER_ORDER = ["sft", "hc_self", "gpt4o_self", "stronger_self", "peer_rm", "all_rm", "original", "self_rm"]
COLORS = {"baseline": "#888888", "multi-model": "#d95f02", "self-generated": "#1b9e77", "custom": "#7570b3"}


def setting_group(model: str) -> str:
    if model == "sft":
        return "baseline"
    return "self-generated" if model in SELF_GENERATED else "multi-model" if model in MULTI_MODEL else "custom"


def paper_order(models) -> list[str]:
    return sorted(models, key=lambda m: (PAPER_ORDER.index(m) if m in PAPER_ORDER else len(PAPER_ORDER), m))


# --------------------------------------------------------------------------- reading results
def asr_entries(res: dict) -> list[dict]:
    """ASR entries: [{judge, set, format, value, ci_low, ci_high, n, ...}]."""
    return list(res.get("safety", []))


def train_curve(rd: RunDir, setting: str, key: str) -> list[tuple[int, float]]:
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


def set_judge_pairs(evals: dict[str, dict]) -> list[tuple[str, str]]:
    """Every (eval set, judge) pair present in any model's results, in first-seen order."""
    return list(dict.fromkeys((e["set"], e["judge"]) for res in evals.values() for e in asr_entries(res)))


def asr_formats(evals: dict[str, dict]) -> list[str]:
    return list(dict.fromkeys(e.get("format", "chat") for res in evals.values() for e in asr_entries(res)))


def asr_entry(res: dict, set_name: str, judge: str, fmt: str) -> dict | None:
    for e in asr_entries(res):
        if e["set"] == set_name and e["judge"] == judge and e.get("format", "chat") == fmt and e["value"] is not None:
            return e
    return None


def file_slug(*parts: str) -> str:
    return "_".join("".join(c if c.isalnum() or c in "-." else "-" for c in p) for p in parts)


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

    return [Patch(color=c, label=g) for g, c in COLORS.items() if any(setting_group(m) == g for m in models)]


def fig_asr(evals: dict[str, dict], out: Path, set_name: str, judge: str, labels: dict[str, str],
            measure: str = "attack success rate") -> Path | None:
    """A judge's rate per setting for one eval set (`measure`: what the rate is, e.g. the keyword
    judge's "non-refusal rate"): one bar per format, 95% Wilson intervals."""
    plt = _plt()
    from matplotlib.patches import Patch

    models, formats = paper_order(evals), asr_formats(evals)
    cells = {(m, f): asr_entry(evals[m], set_name, judge, f) for m in models for f in formats}
    if not any(cells.values()):
        return None
    width = 0.8 / len(formats)
    fig, ax = plt.subplots(figsize=(max(6.0, len(models) * 0.5 * (1 + len(formats))), 4.4), layout="constrained")
    for k, f in enumerate(formats):
        xs = [i + (k - (len(formats) - 1) / 2) * width for i in range(len(models))]
        es = [cells[(m, f)] for m in models]
        vals = [e["value"] if e else float("nan") for e in es]  # no entry: no bar (a 0 bar would read as 0%)
        err = [[e["value"] - e["ci_low"] if e and e.get("ci_low") is not None else 0 for e in es],
               [e["ci_high"] - e["value"] if e and e.get("ci_high") is not None else 0 for e in es]]
        ax.bar(xs, vals, width=width, yerr=err, capsize=3, color=[COLORS[setting_group(m)] for m in models],
               alpha=1.0 - 0.6 * k / max(len(formats), 1), edgecolor="black", linewidth=0.3)
        for x, e in zip(xs, es):
            if not e:
                ax.text(x, 0.02, "n/a", ha="center", va="bottom", fontsize=7, rotation=90, color="#555555")
    ax.set_xticks(list(range(len(models))), [labels.get(m, m) for m in models], rotation=30, ha="right")
    ax.set_ylabel(f"{measure} ({judge})")
    ax.set_ylim(0, 1)
    shades = [Patch(facecolor="#555555", alpha=1.0 - 0.6 * k / len(formats), label=f) for k, f in enumerate(formats)]
    _legend_below(fig, _group_patches(models) + (shades if len(formats) > 1 else []))
    ax.set_title(f"{measure[0].upper() + measure[1:]} on {set_name} per setting (95% Wilson CI)", fontsize=10)
    return save_png(fig, out / f"asr_{file_slug(set_name, judge)}.png")


def fig_forest(comparisons: list[fnd.Comparison], labels: dict[str, str], judge: str, out: Path,
               measure: str = "attack success rate") -> Path | None:
    """ASR(setting) - ASR(sft) with its paired 95% interval, one row per comparison; filled markers
    where the McNemar test finds a change at the 5% level (Holm-adjusted)."""
    rows = [c for c in comparisons if c.asr["interval"]]
    if not rows:
        return None
    plt = _plt()
    several = len({(c.set, c.format) for c in rows}) > 1
    fig, ax = plt.subplots(figsize=(7.5, 1.4 + 0.34 * len(rows)), layout="constrained")
    for i, c in enumerate(rows):
        y = len(rows) - 1 - i
        d, (lo, hi) = c.asr["difference"], c.asr["interval"]
        color = COLORS[setting_group(c.setting)]
        filled = c.verdict != fnd.NO_CHANGE
        ax.errorbar([d], [y], xerr=[[d - lo], [hi - d]], fmt="o", color=color, capsize=3,
                    markerfacecolor=color if filled else "white")
    names = [labels.get(c.setting, c.setting) + (f"  ({c.set} / {c.format})" if several else "") for c in rows]
    ax.set_yticks(list(range(len(rows))), list(reversed(names)), fontsize=8)
    ax.axvline(0, color="grey", ls=":", lw=1)
    ax.set_xlim(-1, 1)
    ax.set_xlabel(f"rate(setting) − rate(sft) under {judge}, 95% paired interval (Newcombe)")
    ax.set_title(f"Change in {measure} vs sft (filled: Holm-adjusted McNemar p < 0.05)", fontsize=10)
    return save_png(fig, out / "findings_asr_change.png")


def fig_separability(ranking: list[dict], labels: dict[str, str], family: str, out: Path) -> Path | None:
    """Probe accuracy per setting, highest at the top, with Wilson intervals."""
    if not ranking:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 1.6 + 0.34 * len(ranking)), layout="constrained")
    for i, r in enumerate(ranking):
        y = len(ranking) - 1 - i
        err = ([[r["accuracy"] - r["ci_low"]], [r["ci_high"] - r["accuracy"]]]
               if r.get("ci_low") is not None else None)
        ax.barh([y], [r["accuracy"]], xerr=err, capsize=3, color=COLORS[setting_group(r["setting"])], height=0.6)
    ax.set_yticks(list(range(len(ranking))), [labels.get(r["setting"], r["setting"]) for r in reversed(ranking)])
    ax.axvline(0.5, color="grey", ls=":", lw=1)
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"chosen-vs-rejected probe accuracy ({family}; 0.5 = chance)")
    ax.set_title("Separability ranking (95% Wilson CI over pairs)", fontsize=10)
    _legend_below(fig, _group_patches([r["setting"] for r in ranking]))
    return save_png(fig, out / "separability_ranking.png")


def fig_training(rd: RunDir, settings: list[str], out: Path, labels: dict[str, str]) -> Path | None:
    """Two panels of one figure: DPO loss and reward margin per logged step, one line per setting."""
    loss = {s: c for s in settings if (c := train_curve(rd, s, "loss"))}
    margin = {s: c for s in settings if (c := train_curve(rd, s, "rewards/margins"))}
    if not loss and not margin:
        return None
    plt = _plt()
    fig, (ax_l, ax_m) = plt.subplots(1, 2, figsize=(10, 4.4), layout="constrained")
    lines = {}
    for ax, curves in ((ax_l, loss), (ax_m, margin)):
        for s in paper_order(curves):
            c = curves[s]
            # Few settings: the group colours; more: one colour each (a group holds up to six).
            color = COLORS[setting_group(s)] if len(curves) < 3 else None
            (line,) = ax.plot([p[0] for p in c], [p[1] for p in c], color=color,
                              linestyle="-" if s in SELF_GENERATED else "--", marker="." if len(c) < 20 else None)
            lines.setdefault(s, line)
        ax.set_xlabel("training step")
    ax_l.set_ylabel("DPO loss")
    ax_l.set_title("Training loss (fast drop = easy pairs)", fontsize=10)
    ax_m.set_ylabel("reward margin (chosen − rejected)")
    ax_m.set_title("Reward margin", fontsize=10)
    order = paper_order(lines)
    _legend_below(fig, [lines[s] for s in order], [labels.get(s, s) for s in order])
    return save_png(fig, out / "training_curves.png")


def fig_sep_vs_asr(sep: dict[str, float], family: str, evals: dict[str, dict], judge: str, out: Path,
                    labels: dict[str, str], measure: str = "attack success rate") -> Path | None:
    """Separability vs ASR for one judge: one marker series per (eval set, format)."""
    plt = _plt()
    from matplotlib.lines import Line2D

    series = [(s, f) for s, j in set_judge_pairs(evals) if j == judge for f in asr_formats(evals)]
    markers = "osD^vP*X<>"
    fig, ax = plt.subplots(figsize=(6.5, 4.8), layout="constrained")
    handles = []
    for k, (set_name, fmt) in enumerate(series):
        pts = [(s, acc, e["value"]) for s, acc in sep.items() if (e := asr_entry(evals.get(s, {}), set_name, judge, fmt))]
        for s, x, y in pts:
            ax.scatter(x, y, color=COLORS[setting_group(s)], marker=markers[k % len(markers)])
            ax.annotate(labels.get(s, s), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        if pts:
            handles.append(Line2D([], [], color="#444444", marker=markers[k % len(markers)], linestyle="",
                                  label=f"{set_name} / {fmt}"))
    if not handles:
        plt.close(fig)
        return None
    ax.set_xlabel(f"chosen-vs-rejected separability ({family})")
    ax.set_ylabel(f"{measure} ({judge})")
    ax.set_title(f"Separability vs {measure} ({judge})", fontsize=10)
    _legend_below(fig, handles + _group_patches(list(sep)))
    return save_png(fig, out / f"separability_vs_asr_{file_slug(judge)}.png")



def fig_refusal(table: dict[str, dict], labels: dict[str, str], out: Path, name: str) -> Path | None:
    """What a safe model does, side by side per setting: refusal of the harmful prompts (solid)
    next to refusal of the benign ones (hatched), each with its 95% Wilson interval. `table`:
    {model: findings.selective()} for one eval set / format."""
    models = [m for m in paper_order(table) if table[m]["value"] is not None]
    if not models:
        return None
    plt = _plt()
    from matplotlib.patches import Patch

    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(models) + 2), 4.4), layout="constrained")
    for k, (side, hatch) in enumerate((("harmful", None), ("benign", "//"))):
        rates = [table[m][side] for m in models]
        xs = [i + (k - 0.5) * 0.38 for i in range(len(models))]
        vals = [r["value"] for r in rates]
        err = [[v - r["interval"][0] for v, r in zip(vals, rates)], [r["interval"][1] - v for v, r in zip(vals, rates)]]
        ax.bar(xs, vals, width=0.38, yerr=err, capsize=3, hatch=hatch, edgecolor="black", linewidth=0.4,
               color=[COLORS[setting_group(m)] for m in models], alpha=1.0 if hatch is None else 0.45)
    ax.set_xticks(list(range(len(models))), [labels.get(m, m) for m in models], rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("refusal rate")
    ax.set_title(f"Refusal: harmful prompts (solid) vs benign (hatched), {name}\n95% Wilson CI", fontsize=9)
    _legend_below(fig, _group_patches(models) + [Patch(facecolor="#999999", label="harmful prompts"),
                                                 Patch(facecolor="#999999", alpha=0.45, hatch="//",
                                                       label="benign prompts")])
    return save_png(fig, out / f"refusal_{file_slug(*name.split(' / '))}.png")
