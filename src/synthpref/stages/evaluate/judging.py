"""Judging: every judge (`evaluate.safety.judges`) scores the answers of all evaluated models,
one judge model in memory at a time.

The judge sees the plain behaviour as the prompt, not the jailbreak wrapper (as HarmBench's
classifier does), so a format changes only what the model was asked. Judgements are cached per
record in eval/<model>/judge_<judge>.jsonl.
"""

from __future__ import annotations

import json
from typing import Any

from ...config import StudyConfig
from ...errors import BackendError
from ...rundir import RecordWriter, RunDir, hash_obj, stable_id
from .plan import BENIGN, EVAL_VERSION


def score_items(judge: str, cfg: StudyConfig, items: list, device: str) -> list:
    from ..score import score_texts

    return score_texts(judge, cfg, items, device)


def judge_info(judge: str, cfg: StudyConfig, device: str) -> dict:
    """Name, kind, model, version and rubric of a judge, without loading its model."""
    from ...backends.scoring.base import make_scorer

    s = make_scorer(judge, cfg, device)
    info = {"name": judge, "kind": s.spec.kind, "model": s.spec.model, "version": s.version,
            "identity": s.identity()}
    rubric = getattr(s, "rubric", None)
    if rubric is not None:
        info["rubric"] = {"name": rubric.name, "version": rubric.version, "digest": getattr(rubric, "digest", None)}
    elif s.spec.rubric:
        info["rubric"] = {"name": s.spec.rubric}
    return info


def _jsonable(v: Any) -> Any:
    try:
        json.dumps(v)
        return v
    except (TypeError, ValueError):
        return str(v)


def judge_all(cfg: StudyConfig, rd: RunDir, judge: str, info: dict, gens: dict[str, list[dict]],
              device: str) -> dict[str, dict[str, dict]]:
    """{model: {gen key: judgement}} for one judge, cached in eval/<model>/judge_<judge>.jsonl.

    Items of all models are scored in one call, so the judge's model loads once."""
    from ...backends.scoring.base import ScoreItem

    inputs = hash_obj({"version": EVAL_VERSION, "judge": info})
    writers = {m: RecordWriter(rd.path("eval", m, f"judge_{judge}.jsonl"), "key", inputs) for m in gens}
    jkey = {m: {g["key"]: stable_id(g["key"], g["response"]) for g in rows} for m, rows in gens.items()}
    items, owner = [], {}
    for m, rows in gens.items():
        for g in rows:
            k = jkey[m][g["key"]]
            if not writers[m].done(k) and k not in owner:
                items.append(ScoreItem(k, g["prompt"], g["response"]))
                owner[k] = m
    if items:
        for res in score_items(judge, cfg, items, device):
            writers[owner[res.key]].add({"key": res.key, "judge": judge, "harmful": res.harmful,
                                         "score": res.score, "raw": _jsonable(res.raw),
                                         "parsed": bool(getattr(res, "parsed", True))})
    out = {}
    for m, w in writers.items():
        w.finish()
        out[m] = {gk: w.records[jk] for gk, jk in jkey[m].items() if jk in w.records}
        missing = [gk for gk, jk in jkey[m].items() if jk not in w.records]
        if missing:
            raise BackendError(f"judge '{judge}' returned no result for {len(missing)} response(s) of '{m}'")
    return out



def judge_models(cfg: StudyConfig, rd: RunDir, gens: dict[str, list[dict]], judges: list[str], refusal_judge: str,
                 infos: dict[str, dict], device: str) -> dict[str, dict[str, dict[str, dict]]]:
    """{judge: {model: {gen key: judgement}}}: each judge's model loads once for all evaluated models.
    The refusal judge also scores the benign answers (over-refusal), in the same pass."""
    safety = {m: [g for g in rows if g["set"] != BENIGN] for m, rows in gens.items()}
    benign = {m: [g for g in rows if g["set"] == BENIGN] for m, rows in gens.items()}
    verdicts = {}
    for j in dict.fromkeys([*judges, *([refusal_judge] if any(benign.values()) else [])]):
        rows = {m: safety[m] * (j in judges) + benign[m] * (j == refusal_judge) for m in gens}
        verdicts[j] = judge_all(cfg, rd, j, infos[j], rows, device)
    return verdicts
