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
from collections import Counter, defaultdict
from pathlib import Path
from typing import Callable

from .. import assets
from ..config import PromptSetSpec, StudyConfig
from ..errors import ConfigError, DataError, did_you_mean
from ..data import PACKAGED, normalise, prompt_id, read_csv, repeat_prompt_id
from ..rundir import RunDir, read_jsonl, sha256_file, write_jsonl
from . import Checks


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
        rows = read_csv(path, strict=True)
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


def _rows(spec: PromptSetSpec, seed: int, where: str) -> list[dict]:
    """The set's rows after shuffle, offset and limit, duplicates included."""
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
    return rows[: spec.limit] if spec.limit else rows


def load_prompt_set(spec: PromptSetSpec, seed: int = 0, where: str = "prompts", dedup: bool = True) -> list[dict]:
    """Prompt records of one set. `dedup`: keep the first row of each prompt. Otherwise every row
    is kept, as the authors' generate.py kept rows 1..10,000 of their split with repeats: the k-th
    repeat of a prompt gets the id `<prompt_id>-r<k>` (so its samples get their own seeds and its
    own human pair joins Original) and `repeat_of: <prompt_id>`."""
    seen: Counter = Counter()
    out = []
    for r in _rows(spec, seed, where):
        text = str(r["text"]).strip()
        pid = prompt_id(text)
        k = seen[pid]
        seen[pid] += 1
        if k == 0:
            out.append({**r, "text": text, "prompt_id": pid, "source": spec.source})
        elif not dedup:
            out.append({**r, "text": text, "prompt_id": repeat_prompt_id(pid, k), "source": spec.source, "repeat_of": pid})
    return out


def duplicates(rows: list[dict]) -> int:
    """Rows that repeat an earlier prompt (kept ones carry `repeat_of`)."""
    return sum(1 for r in rows if r.get("repeat_of"))


def count_duplicates(spec: PromptSetSpec, seed: int = 0, where: str = "prompts.train") -> int:
    """Rows of the set (after offset/limit) that repeat an earlier prompt; raises when unreadable."""
    return duplicates(load_prompt_set(spec, seed, where, dedup=False))


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


# --------------------------------------------------------------------------- stage protocol
CONFIG = ("prompts", "seed")
READS: tuple[str, ...] = ()
WRITES = ("prompts",)
VERSION = 1


def key_inputs(cfg: StudyConfig) -> dict:
    """Contents of local prompt files: editing one must re-run the study from the prompts stage."""
    return {"prompt_files": {s.source: sha256_file(s.source) for s in _specs(cfg)
                             if source_kind(s.source) == "file" and Path(s.source).is_file()}}


def _specs(cfg: StudyConfig) -> list[PromptSetSpec]:
    return [cfg.prompts.train, *cfg.prompts.eval.values(), *([cfg.prompts.benign] if cfg.prompts.benign else [])]


def check(cfg: StudyConfig, checks: Checks) -> None:
    """Every prompt source exists (a hub split is checked when the hub answers)."""
    wheres = ["prompts.train", *[f"prompts.eval.{n}" for n in cfg.prompts.eval],
              *(["prompts.benign"] if cfg.prompts.benign else [])]
    for where, spec in zip(wheres, _specs(cfg)):
        p = check_source(spec, where)
        if p:
            checks.error(p)
        elif spec.source.startswith("hub:"):
            from .sft_data import check_hub_split

            p, note = check_hub_split(spec.source[4:], spec.split, where)
            if p:
                checks.error(p)
            if note:
                checks.note(note)
    if not check_source(cfg.prompts.train, "prompts.train"):
        _note_duplicates(cfg, checks)


def readable_rows(spec: PromptSetSpec, seed: int = 0, where: str = "prompts.train") -> tuple[list[dict] | None, str]:
    """(every row of the set, repeats included, or None; why not) without downloading anything:
    `synthpref validate` counts from what is on disk."""
    if source_kind(spec.source) == "hub":
        return None, f"'{spec.source}' is a hub set, which validate does not download"
    from ..errors import SynthprefError

    try:
        with assets.cached_only():
            return load_prompt_set(spec, seed, where, dedup=False), ""
    except SynthprefError as e:
        return None, str(e)


def _note_duplicates(cfg: StudyConfig, checks: Checks) -> None:
    verb = "dropped" if cfg.prompts.dedup else "kept"
    rows, why = readable_rows(cfg.prompts.train, cfg.seed)
    if rows is None:
        checks.note(f"prompts.train: duplicate prompts {verb}: not counted ({why}); the prompts stage records "
                    f"duplicates_{verb} in the run's manifest")
    else:
        checks.note(f"prompts.train: {duplicates(rows)} duplicate prompt(s) {verb} of {len(rows)} rows "
                    f"(prompts.dedup: {str(cfg.prompts.dedup).lower()})")


def count(spec: PromptSetSpec | None) -> int:
    """Prompts a set yields (its limit, else read it; 0 when unreadable), for the dry run."""
    if spec is None:
        return 0
    if spec.limit:
        return spec.limit
    try:
        return len(load_prompt_set(spec))
    except Exception:
        return 0


def estimate(cfg: StudyConfig, plan) -> list[tuple]:
    return [(f"{plan.n_train} train, {plan.n_eval} eval, {plan.n_benign} benign", "load", 0.0, 0.0, "")]



def run(cfg: StudyConfig, rd: RunDir) -> dict:
    """Stage: write prompts/train.jsonl, prompts/eval_<name>.jsonl and prompts/benign.jsonl."""
    out = rd.stage("prompts")
    rows = load_prompt_set(cfg.prompts.train, cfg.seed, "prompts.train", dedup=False)
    repeats = duplicates(rows)
    train = [r for r in rows if not r.get("repeat_of")] if cfg.prompts.dedup else rows
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
    # Repeated training prompts: kept (the authors) or dropped (prompts.dedup), counted either way.
    return {"train": len(train), **{f"eval_{n}": len(r) for n, r in evals.items()}, "overlap": len(hits),
            "duplicates_dropped" if cfg.prompts.dedup else "duplicates_kept": repeats}


def read_prompts(rd: RunDir, name: str = "train") -> list[dict]:
    return read_jsonl(rd.path("prompts", f"{name}.jsonl"), required=("prompt_id", "text"))
