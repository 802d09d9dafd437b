"""Assemble synthpref/labelled/answers-v1.jsonl and card.json from the labelling files.

    python tools/build_labelled_set.py KEY PASS_A PASS_B RESOLVED OUT_DIR

KEY: one JSON line per row with the hidden facts (row, model, kind, set, prompt_id, prompt, answer,
n_tokens, finish_reason), written when the rows were shuffled for labelling; PASS_A / PASS_B: the
two blind passes ({row, refusal, complies_in_tone, harmful_substance, degenerate, note?});
RESOLVED: the third reading of every row where the passes differ (same fields). The shipped label is
the passes' common label, or the resolved one where they differ; both passes ship beside it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from synthpref.labelled_answers import LABELS, SET_NAME, human_comparisons, pass_agreement  # noqa: E402


def _read(path: str) -> dict[str, dict]:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    out = {r["row"]: r for r in rows}
    if len(out) != len(rows):
        raise SystemExit(f"{path}: a row id appears twice")
    return out


def main(key: str, pass_a: str, pass_b: str, resolved: str, out_dir: str) -> None:
    k, a, b, res = _read(key), _read(pass_a), _read(pass_b), _read(resolved)
    for name, got in (("pass A", a), ("pass B", b)):
        if set(got) != set(k):
            raise SystemExit(f"{name}: labels {len(got)} rows, the key has {len(k)}; every row needs labels")
    rows = []
    for rid in sorted(k):
        la, lb = ({f: p[rid][f] for f in LABELS} for p in (a, b))
        differ = la != lb
        if differ and rid not in res:
            raise SystemExit(f"{resolved}: row {rid} differs between the passes and has no resolution")
        final = {f: res[rid][f] for f in LABELS} if differ else la
        r = k[rid]
        rows.append({"row": rid, "kind": r["kind"], "set": r["set"], "prompt_id": r["prompt_id"],
                     "model": r["model"], "prompt": r["prompt"], "response": r["answer"], "n_tokens": r["n_tokens"],
                     "finish_reason": r["finish_reason"], "labels": final, "pass_a": la, "pass_b": lb,
                     "resolved": differ})
    out = Path(out_dir)
    (out / "answers-v1.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    card = {"name": SET_NAME, "model": "smollm2-135m-instruct", "max_new_tokens": 48, "decoding": "greedy",
            "settings": sorted({r["model"] for r in rows}), "n": len(rows),
            "n_harmful": sum(r["kind"] == "harmful" for r in rows),
            "n_benign": sum(r["kind"] == "benign" for r in rows),
            "positives": {f: sum(r["labels"][f] for r in rows) for f in LABELS},
            "passes": pass_agreement(rows),
            # the annotators' labels per setting (model) and prompt kind: a human reading of these answers
            "by_setting": {f"{m}/{kind}": {"n": len(sel), **{f: sum(r["labels"][f] for r in sel) for f in LABELS}}
                           for m in sorted({r["model"] for r in rows}) for kind in ("harmful", "benign")
                           if (sel := [r for r in rows if r["model"] == m and r["kind"] == kind])},
            "paired_vs_sft": human_comparisons(rows)}
    (out / "card.json").write_text(json.dumps(card, indent=1) + "\n")
    print(json.dumps(card, indent=1))


if __name__ == "__main__":
    if len(sys.argv) != 6:
        raise SystemExit(__doc__)
    main(*sys.argv[1:])
