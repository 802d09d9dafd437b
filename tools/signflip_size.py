"""How often the seeds report's pooled test (replicates.pooled_test: the prompt-clustered sign-flip
test) rejects at 5% when nothing changed.

Its null is that each prompt's summed difference is symmetric about 0. With one shared SFT answer
Y and S seed answers X_s of a setting that refuses exactly as often (rate p), d = sum(X_s) - S*Y
is not symmetric for S >= 2, so the test is exact only under that assumption. This simulates the
design of a `seeds` study (prompts x seeds, one SFT answer per prompt, equal rates) and prints the
share of runs whose p is at most 0.05, beside the same for the stratified exact McNemar test the
seeds report used before (discordant pairs summed over seeds, each counted as independent).

    .venv/bin/python tools/signflip_size.py [prompts] [seeds] [runs]
"""

from __future__ import annotations

import random
import sys

from synthpref.stats import mcnemar_exact, signflip_exact


def size(p: float, prompts: int, seeds: int, runs: int, rng: random.Random) -> tuple[float, float]:
    clustered = pairs = 0
    for _ in range(runs):
        ds, b, c = [], 0, 0
        for _ in range(prompts):
            y = rng.random() < p
            xs = [rng.random() < p for _ in range(seeds)]
            ds.append(sum(xs) - seeds * y)
            b += sum(x and not y for x in xs)
            c += sum(y and not x for x in xs)
        clustered += signflip_exact(ds) <= 0.05
        pairs += mcnemar_exact(b, c) <= 0.05
    return clustered / runs, pairs / runs


def main(prompts: int = 100, seeds: int = 3, runs: int = 2000) -> None:
    rng = random.Random(0)
    print(f"{prompts} prompts x {seeds} seeds, {runs} simulated studies per rate, no change (seed 0)")
    for p in (0.05, 0.1, 0.3, 0.5):
        clustered, pairs = size(p, prompts, seeds, runs, rng)
        print(f"  refusal rate {p:.2f}: rejected at 5% in {clustered:.3f} of runs (prompt-clustered sign-flip), "
              f"{pairs:.3f} (stratified McNemar, pairs as independent)")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
