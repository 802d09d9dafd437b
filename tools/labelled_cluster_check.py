"""Does the labelled set's Wilson interval understate its uncertainty?

synthpref-answers-v1 holds three answers per prompt (the SFT model and two DPO-trained ones), so its
rows are not independent draws. This prints, for the keyword refusal verdict (the one nearest the
pass rule), the 95% Wilson interval that labelled_answers.compare reports next to a 95% cluster
bootstrap interval that resamples whole prompts (4,000 resamples, seed 0).

    .venv/bin/python tools/labelled_cluster_check.py
"""

from __future__ import annotations

import random
from collections import defaultdict

from synthpref import labelled_answers
from synthpref.answer_classes import decide_refusal, judge_refusal
from synthpref.backends.scoring.keywords import PAPER_REFUSAL_STRINGS, matched_refusal
from synthpref.stats import wilson_interval


def main(resamples: int = 4000) -> None:
    rows = labelled_answers.load()
    by_prompt: dict[str, list[bool]] = defaultdict(list)
    for r in rows:
        flagged = matched_refusal(r["response"], PAPER_REFUSAL_STRINGS) is None
        verdict = decide_refusal(judge_refusal({"harmful": flagged, "raw": None}, "keywords"), r["prompt"], r["response"])
        by_prompt[r["prompt_id"]].append(verdict == r["labels"]["refusal"])
    k, n = sum(sum(v) for v in by_prompt.values()), sum(len(v) for v in by_prompt.values())
    lo, hi = wilson_interval(k, n)
    keys, rng, accs = sorted(by_prompt), random.Random(0), []
    for _ in range(resamples):
        pick = [rng.choice(keys) for _ in keys]
        accs.append(sum(sum(by_prompt[c]) for c in pick) / sum(len(by_prompt[c]) for c in pick))
    accs.sort()
    sizes = sorted({len(v) for v in by_prompt.values()})
    print(f"keywords refusal verdict vs the annotators: {k}/{n} = {k / n:.3f} over {len(keys)} prompts "
          f"(answers per prompt: {sizes})")
    print(f"  95% Wilson (rows independent):   [{lo:.3f}, {hi:.3f}]")
    print(f"  95% cluster bootstrap by prompt: [{accs[int(0.025 * resamples)]:.3f}, "
          f"{accs[int(0.975 * resamples) - 1]:.3f}]")


if __name__ == "__main__":
    main()
