"""Readers for the records stages share: responses (generate/) and scores (score/).

Response record (generate/<model>.jsonl; human responses in generate/human.jsonl):
    {response_id, prompt_id, model, backend, seed, kind, sample_index, text, n_tokens,
     finish_reason, refused_by_api, dropped}
    refused_by_api: the API declined to answer (content filter); such records are also dropped.
    kind: "greedy" | "sample" | "human_chosen" | "human_rejected"
Score record (score/<scorer>.jsonl):
    {response_id, prompt_id, item, scorer, score, harmful, raw, parsed, version}
    item: fingerprint of the (prompt, response) text scored, so a changed response is re-scored.
    score: higher = better (safer / more preferred); None when unparseable.
    harmful: True/False/None (None = the scorer could not tell), used for ASR.
"""

from __future__ import annotations

from .rundir import RunDir, read_jsonl

RESPONSE_FIELDS = ("response_id", "prompt_id", "model", "kind", "text")
SCORE_FIELDS = ("response_id", "prompt_id", "scorer", "score")


def response_files(rd: RunDir):
    return sorted(rd.path("generate").glob("*.jsonl"))


def load_responses(rd: RunDir, include_dropped: bool = False) -> list[dict]:
    out = []
    for f in response_files(rd):
        for r in read_jsonl(f, required=RESPONSE_FIELDS):
            if include_dropped or not r.get("dropped"):
                out.append(r)
    return out


def load_scores(rd: RunDir, scorer: str) -> dict[str, dict]:
    """response_id -> score record for one scorer."""
    return {r["response_id"]: r for r in read_jsonl(rd.path("score", f"{scorer}.jsonl"), required=SCORE_FIELDS)}
