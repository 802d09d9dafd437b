"""Per-prompt verdicts beside the report, small enough to commit with it (docs/results/<study>/).

The report's numbers are computed from eval/<model>/safety_samples.jsonl and
over_refusal_samples.jsonl, which also hold the model input with its chat template and every
judge's raw output. This writes what a reader needs to re-check each number and nothing more:
per answer the prompt, the answer, each judge's verdict and score, the class judge's refusal verdict
under the current rules (synthpref.answer_classes) and the answer class, the verdict the findings
rank by where that is another judge's (`ranked_refusal`); and the probe's results.json.

Layout (under the report folder): per_prompt/<model>.safety.jsonl, per_prompt/<model>.benign.jsonl,
per_prompt/probe_results.json. Rows sorted by set, format, prompt id, so a re-render is byte-identical.
"""

from __future__ import annotations

from pathlib import Path

from . import answer_classes
from .rundir import RunDir, atomic_open, read_jsonl, write_jsonl

RAW_KEPT = ("p_harmful", "p_refusal", "refusal")  # harm_head's raw output; other judges' raw text is left out


def _judge(j: dict) -> dict:
    raw = j.get("raw")
    out = {"harmful": j.get("harmful"), "parsed": j.get("parsed", True),
           "score": None if j.get("score") is None else round(float(j["score"]), 4)}
    if isinstance(raw, dict):
        out.update({k: (round(raw[k], 4) if isinstance(raw[k], float) else raw[k]) for k in RAW_KEPT if k in raw})
    elif isinstance(raw, str):
        out["matched"] = raw  # the keyword matcher's refusal string
    return out


def row(sample: dict, judge: str | None, kind: str | None, benign: bool,
        ranked: tuple[str, str] | None = None) -> dict:
    """One answer: join keys, prompt, answer, every judge's verdict, refusal verdict and class.
    `ranked`: (name, kind) of the refusal verdict the findings rank by (findings.refusal_choice),
    written as `ranked_refusal` where it is not the class judge's, so each rate can be re-checked."""
    js = sample.get("judges") or {}
    out = {k: sample.get(k) for k in ("model", "set", "format", "prompt_id", "prompt", "response", "n_tokens",
                                      "finish_reason")}
    out["judges"] = {name: _judge(j) for name, j in sorted(js.items())}
    if judge and judge in js:
        cls = answer_classes.sample_class(sample.get("response") or "", js[judge], kind, benign,
                                          prompt=sample.get("prompt") or "")
        out.update({"refusal": cls["refusal"], "class": cls["class"], "rules": answer_classes.RULES_VERSION})
    if ranked and ranked[0] != judge and ranked[0] in js:
        r = answer_classes.sample_class(sample.get("response") or "", js[ranked[0]], ranked[1], benign,
                                        prompt=sample.get("prompt") or "")
        out["ranked_refusal"] = {"judge": ranked[0], "refusal": r["refusal"]}
    return out


def write(rd: RunDir, out: Path, models: list[str], judge: str | None, kind: str | None,
          ranked: tuple[str, str] | None = None) -> list[Path]:
    """Write the per-prompt files of `models` under out/per_prompt/ (and remove the others there: they
    are derived from eval/, which keeps every answer); returns the files written."""
    folder = out / "per_prompt"
    written = []
    for m in models:
        for src, name, benign in (("safety_samples.jsonl", "safety", False), ("over_refusal_samples.jsonl", "benign", True)):
            f = rd.path("eval", m, src)
            if f.exists():
                dest = folder / f"{m}.{name}.jsonl"
                rows = sorted((row(s, judge, kind, benign, ranked) for s in read_jsonl(f)),
                              key=lambda r: (r["set"] or "", r["format"] or "", r["prompt_id"] or ""))
                write_jsonl(dest, rows)
                written.append(dest)
    probe = rd.path("probe", "results.json")
    if probe.exists():
        with atomic_open(folder / "probe_results.json", "wb") as fh:
            fh.write(probe.read_bytes())
        written.append(folder / "probe_results.json")
    for old in folder.glob("*") if folder.is_dir() else []:  # a model no longer evaluated leaves no file behind
        if old.is_file() and old not in written:
            old.unlink()
    return written
