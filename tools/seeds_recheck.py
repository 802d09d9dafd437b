"""Re-test a committed `seeds` study from its per-prompt verdicts with the current pooled test.

The per-prompt files beside each seed's report (docs/results/<study>/per_prompt and
seeds/seed-<k>/per_prompt) hold every verdict the seeds report is computed from. This reads them
back and prints, per setting and measure, the pooled test replicates.pooled_test runs now (the
prompt-clustered exact sign-flip test), Holm-adjusted over the rows it prints, beside the p-value
of the stratified McNemar test that treats each pair as independent (for comparison only).

    .venv/bin/python tools/seeds_recheck.py docs/results/demo
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from synthpref.findings import keyed_rates
from synthpref.replicates import pooled_test
from synthpref.stats import holm, mcnemar_exact

MEASURES = {  # name: (file, verdict read from a per-prompt row)
    "harmful-prompt refusal": ("safety", lambda r: r.get("refusal")),
    "benign refusal": ("benign", lambda r: r.get("refusal")),
    "non-refusal rate": ("safety", lambda r: r["judges"]["keywords"]["harmful"]),
    "harm-judge flag rate": ("safety", lambda r: r["judges"]["harm"]["harmful"]),
}


def rows_of(folder: Path, model: str, kind: str) -> dict[str, dict]:
    f = folder / "per_prompt" / f"{model}.{kind}.jsonl"
    return {f"{r['set']}/{r['format']}/{r['prompt_id']}": r for r in map(json.loads, f.open())} if f.exists() else {}


def main(study: Path) -> None:
    seeds = [study, *sorted((study / "seeds").glob("seed-*"))]
    settings = sorted({p.name.split(".")[0] for p in (study / "per_prompt").glob("*.safety.jsonl")} - {"sft"})
    out = []
    for setting in settings:
        for measure, (kind, verdict) in MEASURES.items():
            sft = rows_of(study, "sft", kind)  # the SFT model is shared by every seed
            tables = []
            for folder in seeds:
                mine = rows_of(folder, setting, kind)
                tables.append(keyed_rates((k, verdict(mine[k]), verdict(sft[k])) for k in sft if k in mine))
            tables = [t for t in tables if t["n"]]
            if tables:
                p = pooled_test(tables)
                out.append((setting, measure, p, mcnemar_exact(p["b"], p["c"])))
    adjusted = holm([p["p_value"] for _, _, p, _ in out])
    print(f"{study}: {len(seeds)} seeds, {len(out)} pooled tests, Holm over all of them")
    print(f"{'setting':<10} {'measure':<24} {'pairs':>5} {'prompts':>7} {'only sft/only setting':>22} "
          f"{'diff':>7} {'p clustered':>11} {'p Holm':>9} {'p McNemar (pairs indep.)':>24}")
    for (setting, measure, p, p_mc), q in zip(out, adjusted):
        print(f"{setting:<10} {measure:<24} {p['n']:>5} {p['prompts_changed']:>3}/{p['prompts']:<3} "
              f"{p['c']:>10} / {p['b']:<9} {p['difference']:>+7.3f} {p['p_value']:>11.2g} {q:>9.2g} {p_mc:>24.2g}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/results/demo"))
