"""Stage: score every (prompt, response) with every scorer in `score.scorers`.

Reads generate/*.jsonl (responses) and prompts/train.jsonl (prompt texts); writes one
score/<scorer>.jsonl per scorer (record format in tables.py). Scorers run one after another,
each freed before the next loads (one model in memory at a time). Each file is written through a
RecordWriter whose inputs hash covers the scorer's spec and version; each record is keyed by its
response id and carries `item`, a fingerprint of the (prompt, response) text it scored. A re-run
scores only responses it has no record for or whose text changed, and drops records of responses
that are gone; a changed rubric or scorer starts that scorer's file over.

`backends.scoring.score_texts` is the same scoring for callers outside the stage (evaluate
judges its generations with these scorers).
"""

from __future__ import annotations

import sys
from collections import defaultdict
from typing import Any, Iterable

from ..backends.scoring.base import ScoreItem, ScoreResult, Scorer, make_scorer, score_texts  # noqa: F401
from ..config import StudyConfig
from ..errors import BackendError, DataError
from .prompts import read_prompts
from ..rundir import RecordWriter, RunDir, hash_obj, stable_id
from ..tables import load_responses
from . import Checks

# --------------------------------------------------------------------------- stage protocol
CONFIG = ("score",)
READS = ("prompts", "generate")
WRITES = ("score",)
VERSION = 1


def check(cfg: StudyConfig, checks: Checks) -> None:
    """Every scorer's kind exists, its model can be found and its rubric file exists."""
    from pathlib import Path

    from ..backends.scoring import get_scorer_class
    from ..errors import SynthprefError
    from ..models import check_reference

    for name, sc in cfg.score.scorers.items():
        try:
            get_scorer_class(sc.kind)
        except SynthprefError as e:
            checks.problem(f"score.scorers.{name}.kind", str(e))
        if sc.model and sc.model not in cfg.models:
            p = check_reference(sc.model)
            if p:
                checks.problem(f"score.scorers.{name}.model", p)
        if sc.rubric_file and not Path(sc.rubric_file).expanduser().is_file():
            checks.problem(f"score.scorers.{name}.rubric_file", f"'{sc.rubric_file}' does not exist")


def estimate(cfg: StudyConfig, plan) -> list[tuple]:
    n = sum(1 for sc in cfg.score.scorers.values() if sc.score_training)
    return [(f"{n} scorer(s)", "all responses", None, None, "not estimated (small next to generation)")]


# Scores are rounded so that the last bits of float arithmetic (which can differ with batch
# composition after a resume) do not change the bytes of the output.
DIGITS = 6


def _round(x: Any) -> Any:
    if isinstance(x, float):
        return round(x, DIGITS)
    if isinstance(x, dict):
        return {k: _round(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_round(v) for v in x]
    return x


def record(res: ScoreResult, scorer: Scorer, **fields) -> dict:
    """A score record (tables.py format) for one result; `fields` adds the join keys."""
    return {**fields, "scorer": scorer.name, "score": _round(res.score), "harmful": res.harmful,
            "raw": _round(res.raw), "parsed": bool(res.parsed), "version": scorer.version}


def inputs_hash(scorer: Scorer, items: Iterable[ScoreItem] = ()) -> str:
    """The scorer's identity; the items are checked per record (`item_key`), not here."""
    return hash_obj(scorer.identity())


def item_key(it: ScoreItem) -> str:
    return stable_id(it.prompt, it.response)


def _progress(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="resp", file=sys.stderr, mininterval=1.0, dynamic_ncols=True)


def score_to_writer(scorer: Scorer, items: list[ScoreItem], writer: RecordWriter,
                    fields: dict[str, dict] | None = None) -> list[dict]:
    """Score the items `writer` does not hold yet, add a record per result, return all records.

    `fields[key]` holds the join keys stored with item `key` (e.g. prompt_id); the record's
    writer key is the item key. Nothing is loaded when every item is already done.
    """
    todo = [it for it in items if not writer.done(it.key)]
    if todo:
        wanted = {it.key for it in todo}
        with _progress(len(todo), f"score/{scorer.name}") as bar:
            for res in scorer.score(todo):
                if res.key not in wanted:
                    raise BackendError(f"scorer '{scorer.name}' returned a result for unknown key '{res.key}'")
                wanted.discard(res.key)
                writer.add(record(res, scorer, **{writer.key: res.key, **(fields or {}).get(res.key, {})}))
                bar.update(1)
        if wanted:
            raise BackendError(f"scorer '{scorer.name}' returned no result for {len(wanted)} item(s) "
                               f"(first: {sorted(wanted)[0]}); re-run to retry them")
    return writer.finish()


def _mean(xs: list[float]) -> float | None:
    return round(sum(xs) / len(xs), 4) if xs else None


def summarise(records: list[dict], model_of: dict[str, str]) -> dict:
    by_model: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_model[model_of.get(r["response_id"], "?")].append(r)
    return {
        "n": len(records),
        "unparseable": sum(1 for r in records if not r["parsed"]),
        "mean_score": {m: _mean([r["score"] for r in rs if r["score"] is not None]) for m, rs in sorted(by_model.items())},
        "harmful_rate": {m: _mean([float(r["harmful"]) for r in rs if r["harmful"] is not None])
                         for m, rs in sorted(by_model.items())},
    }


def run(cfg: StudyConfig, rd: RunDir) -> dict:
    from ..models import pick_device

    responses = load_responses(rd)
    if not responses:
        raise DataError(f"{rd.path('generate')}: no responses to score; run the generate stage first")
    prompts = {p["prompt_id"]: p["text"] for p in read_prompts(rd)}
    orphans = [r for r in responses if r["prompt_id"] not in prompts]
    if orphans:
        raise DataError(f"generate/{orphans[0]['model']}.jsonl: response {orphans[0]['response_id']} has prompt_id "
                        f"{orphans[0]['prompt_id']} not in prompts/train.jsonl; re-run generate (--force)")
    responses.sort(key=lambda r: r["response_id"])
    items = [ScoreItem(r["response_id"], prompts[r["prompt_id"]], r["text"]) for r in responses]
    fields = {it.key: {"prompt_id": r["prompt_id"], "item": item_key(it)} for it, r in zip(items, responses)}
    model_of = {r["response_id"]: r["model"] for r in responses}
    device = pick_device(cfg.device)
    out = rd.stage("score")
    summary = {}
    for name, spec in cfg.score.scorers.items():
        if not spec.score_training and name != cfg.score.reward:
            continue
        scorer = make_scorer(name, cfg, device)
        writer = RecordWriter(out / f"{name}.jsonl", key="response_id", inputs_hash=inputs_hash(scorer))
        # keep only records of current responses with the same text; the rest are scored (again)
        writer.prune(lambda r: r.get("item") is not None and r.get("item") == fields.get(r["response_id"], {}).get("item"))
        try:
            records = score_to_writer(scorer, items, writer, fields)
        finally:
            writer.close()
            scorer.close()
        summary[name] = summarise(records, model_of)
    return {"responses": len(responses), "scorers": summary}
