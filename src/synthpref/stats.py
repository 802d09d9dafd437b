"""Proportions with confidence intervals: attack success rates, refusal rates, accuracies.

Intervals are Wilson score intervals (E. B. Wilson, 1927, "Probable inference, the law of
succession, and statistical inference", JASA 22:209-212). Brown, Cai & DasGupta (2001, "Interval
estimation for a binomial proportion", Statistical Science 16:101-133) show the textbook Wald
interval p +/- z*sqrt(p(1-p)/n) covers far below its nominal level at the small n and extreme p
of a jailbreak evaluation (an ASR of 0/32 gives the degenerate Wald interval [0, 0]), and
recommend Wilson's for n < 40 and beyond. Values agree with Newcombe (1998, Statistics in
Medicine 17:857-872, Table II, method 3); see tests/unit/test_eval_math.py.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Iterable


def z_value(confidence: float = 0.95) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_bounds(p: float, n: int, z: float) -> tuple[float, float]:
    """Wilson score interval around an observed rate p over n trials, at normal quantile z."""
    z2n = z * z / n
    centre = (p + z2n / 2) / (1 + z2n)
    half = z / (1 + z2n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float] | None:
    """Wilson score interval for k successes out of n trials; None when n == 0."""
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return None
    lo, hi = wilson_bounds(k / n, n, z_value(confidence))
    # Clamp float noise: at k = 0 (k = n) the exact lower (upper) bound is 0 (1).
    return (0.0 if k == 0 else lo), (1.0 if k == n else hi)


def proportion(k: int, n: int, confidence: float = 0.95) -> dict:
    """{'value', 'interval', 'k', 'n'}: k/n with its Wilson interval (value and interval None if n == 0)."""
    ci = wilson_interval(k, n, confidence)
    return {"value": k / n if n else None, "interval": list(ci) if ci else None, "k": k, "n": n,
            "confidence": confidence}


def rate_from_verdicts(verdicts: Iterable[bool | None], confidence: float = 0.95) -> dict:
    """Share of True among the verdicts that are not None.

    None verdicts (a judge output that could not be parsed, or a judge that gives no verdict) are
    left out of the denominator and counted in `n_excluded`, so a judge failing on some samples
    neither inflates nor deflates the rate, and the failures stay visible."""
    vs = list(verdicts)
    judged = [v for v in vs if v is not None]
    out = proportion(sum(1 for v in judged if v), len(judged), confidence)
    out["n_total"] = len(vs)
    out["n_excluded"] = len(vs) - len(judged)
    return out


def mean_and_stderr(values: Iterable[float | None]) -> dict:
    """Mean, standard error of the mean (sample sd / sqrt(n)) and n of the non-None values."""
    xs = [float(v) for v in values if v is not None]
    n = len(xs)
    if n == 0:
        return {"value": None, "stderr": None, "n": 0}
    m = sum(xs) / n
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0
    return {"value": m, "stderr": sd / math.sqrt(n), "n": n}


def normal_interval(value: float | None, stderr: float | None, confidence: float = 0.95) -> list[float] | None:
    """value +- z * stderr, for means that are not proportions (None without a stderr)."""
    if value is None or stderr is None:
        return None
    z = z_value(confidence)
    return [value - z * stderr, value + z * stderr]
