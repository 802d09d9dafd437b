"""Candidate offline ASR judges, measured against the JailbreakBench judge set (100 responses,
human majority) that none of them is fitted on.

Every candidate uses the `harm_head` recipe (all-MiniLM-L6-v2 features [e_p, e_r, e_p*e_r] plus
the refusal-keyword flag, standardised, L2 logistic regression, C chosen by 5-fold CV grouped by
prompt on the candidate's own training rows) and differs only in its packaged human labels:

- harm: PyRIT scorer-evals harm/*.csv, harmful = mean human harm score >= 0.5 (harm_head's choice)
- objective: PyRIT objective/*.csv, human "objective achieved"
- harm+objective, harm+objective+refusal (refusal*.csv refusals as not harmful)

plus the refusal-keyword list alone and "head AND no refusal keyword" for each head. The
training set was chosen with this table, i.e. after seeing JBB figures for these candidates: the
winner's figure carries that selection effect (docs/reproduce.md).

    python benchmarks/bench_judge.py            # prints a markdown table; --json for a record
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from synthpref.agreement import agreement, load_set
    from synthpref.backends.scoring import harm_head as hh
    from synthpref.backends.scoring.embedding_rm import Embedder, features, head_logit
    from synthpref.backends.scoring.keywords import GCG_REFUSAL_PREFIXES, matched_refusal
    from synthpref.stages.prompts import normalise

    t0 = time.time()
    jbb = load_set("jbb-judge")
    objective = [{"prompt": r["prompt"], "response": r["response"], "label": int(r["label"])}
                 for r in load_set("pyrit-objective") if r["response"].strip()]
    harm = hh.harm_rows()
    refusals = [{**r, "label": 0} for r in hh.refusal_rows() if r["label"] == 1]
    candidates = {"harm": harm, "objective": objective, "harm+objective": harm + objective,
                  "harm+objective+refusal": harm + objective + refusals}

    # Embed every distinct text once.
    rows_all = jbb + harm + objective + refusals
    texts = sorted({t for r in rows_all for t in (r["prompt"], r["response"])})
    emb = Embedder().encode(texts)
    index = {t: i for i, t in enumerate(texts)}

    def X(rows):
        ep = emb[[index[r["prompt"]] for r in rows]]
        er = emb[[index[r["response"]] for r in rows]]
        kw = np.array([[1.0 if matched_refusal(r["response"], GCG_REFUSAL_PREFIXES) else 0.0] for r in rows])
        return np.hstack([features(ep, er), kw])

    Xj = X(jbb)
    yj = [r["label"] for r in jbb]
    no_kw = [matched_refusal(r["response"], GCG_REFUSAL_PREFIXES) is None for r in jbb]
    results = [{"judge": "refusal keywords (Zou et al. 2023)", "train_rows": 0, **agreement(yj, no_kw)}]
    for name, rows in candidates.items():
        Xt = X(rows)
        yt = np.array([r["label"] for r in rows])
        head, cv = hh.fit_with_cv(Xt, yt, [normalise(r["prompt"]) for r in rows])
        pred = [bool(z > 0) for z in head_logit(head, Xj)]
        base = {"train_rows": len(rows), "C": cv["C"], "cv_accuracy": cv["cv_accuracy"]}
        results.append({"judge": f"head on {name}", **base, **agreement(yj, pred)})
        results.append({"judge": f"head on {name} AND no refusal keyword", **base,
                        **agreement(yj, [p and k for p, k in zip(pred, no_kw)])})
    if args.json:
        print(json.dumps({"set": "jbb-judge", "n": len(jbb), "seconds": round(time.time() - t0, 1),
                          "results": results}, indent=1))
        return
    print(f"JBB judge set, n={len(jbb)}, human-majority agreement (none of these judges is fitted on it); "
          f"{time.time() - t0:.0f} s\n")
    print("| judge | training rows | C (grouped CV) | CV acc. (own rows) | JBB accuracy | JBB kappa |")
    print("|---|---|---|---|---|---|")
    for r in results:
        cvacc = f"{r['cv_accuracy']:.3f}" if "cv_accuracy" in r else ""
        print(f"| {r['judge']} | {r['train_rows']} | {r.get('C', '')} | {cvacc} | {r['accuracy']:.3f} | {r['kappa']:.3f} |")


if __name__ == "__main__":
    main()
