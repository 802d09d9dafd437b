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


# --------------------------------------------------------------------------- paired proportions
# Two measurements on the same prompts (one model's verdict vs another's): the 2x2 table of pairs
#                 second +   second -
#     first +        a          b
#     first -        c          d
# with first rate p1 = (a + b) / n, second rate p2 = (a + c) / n and difference p1 - p2 = (b - c) / n.
# Only the discordant cells b and c carry information about the difference.


def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value for b and c discordant pairs.

    Under "no difference" each of the b + c discordant pairs falls either way with probability 1/2,
    so the test is a binomial test with p = 0.5 on b + c trials (McNemar 1947, Psychometrika
    12:153-157, in its exact conditional form; see Fagerland, Lydersen & Laake 2013, BMC Medical
    Research Methodology 13:91): p = min(1, 2 * P(X <= min(b, c))), X ~ Binomial(b + c, 1/2).
    No discordant pairs gives p = 1. Worked: b=0, c=6 -> 2/64 = 0.03125; b=1, c=9 -> 22/1024."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2 ** n)  # integer numerator and denominator: exact until the one division


def paired_difference_interval(a: int, b: int, c: int, d: int,
                               confidence: float = 0.95) -> tuple[float, float] | None:
    """Interval for p1 - p2 from paired data (table above): Newcombe's hybrid score interval.

    R. G. Newcombe (1998), "Improved confidence intervals for the difference between binomial
    proportions based on paired data", Statistics in Medicine 17:2635-2650, method 10: the Wilson
    score intervals (l1, u1) of p1 and (l2, u2) of p2 are combined by "square and add", corrected
    for the correlation phi of the two measurements:

        L = D - sqrt((p1 - l1)^2 - 2 phi (p1 - l1)(u2 - p2) + (u2 - p2)^2)
        U = D + sqrt((p2 - l2)^2 - 2 phi (p2 - l2)(u1 - p1) + (u1 - p1)^2)

    with phi = C / sqrt((a+b)(c+d)(a+c)(b+d)), where C = ad - bc - n/2 if ad - bc > n/2, 0 if
    0 <= ad - bc <= n/2, and ad - bc if it is negative (phi = 0 when a margin is empty). Unlike the
    Wald interval it never collapses to a point when b = c = 0, and it stays inside [-1, 1].
    Checked against Fagerland, Lydersen & Laake (2017), "Statistical Analysis of Contingency
    Tables", ch. 8, Cavo et al. (2012) example (tests/unit/test_stats_paired.py). None when n = 0."""
    if min(a, b, c, d) < 0:
        raise ValueError(f"cell counts must be >= 0, got a={a}, b={b}, c={c}, d={d}")
    n = a + b + c + d
    if n == 0:
        return None
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson_interval(a + b, n, confidence)
    l2, u2 = wilson_interval(a + c, n, confidence)
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    cross = a * d - b * c
    corr = cross - n / 2 if cross > n / 2 else (0.0 if cross >= 0 else cross)
    phi = corr / math.sqrt(margins) if margins else 0.0
    diff = p1 - p2
    dl1, du1, dl2, du2 = p1 - l1, u1 - p1, p2 - l2, u2 - p2
    lo = diff - math.sqrt(max(0.0, dl1 ** 2 - 2 * phi * dl1 * du2 + du2 ** 2))
    hi = diff + math.sqrt(max(0.0, dl2 ** 2 - 2 * phi * dl2 * du1 + du1 ** 2))
    return max(-1.0, lo), min(1.0, hi)


def signflip_exact(diffs: list[int]) -> float:
    """Exact two-sided sign-flip (permutation) p-value for the sum of per-cluster integer differences.

    Each cluster (here: a prompt, whose answers in several seeds share one SFT answer) contributes
    d_i = its summed difference between the two models. The null is that each d_i is as likely to
    be -d_i: the distribution of T = sum(d_i) is then that of sum(s_i * d_i) over all 2^n sign
    vectors (Fisher's randomization test, as for the paired sign-flip test; a cluster moves as one
    unit, so correlated answers within it are not counted as independent). The p-value is exact
    under that symmetry, counted by convolution over the possible sums, in integers:
    p = #{signs: |sum s_i d_i| >= |T|} / 2^n. Clusters with d_i = 0 change nothing. With one shared
    answer on one side and several seeds on the other, d_i is not exactly symmetric when the rates
    are equal, so there the test is approximate: tools/signflip_size.py simulates its size.
    Worked: [1, 1, 1] -> 2/8 = 0.25; [2, 1] -> 2/4 = 0.5; six clusters of +1 -> 2/64 = 0.03125
    (equal to the exact McNemar test when every cluster holds one pair)."""
    ds = [abs(int(d)) for d in diffs if d]
    if not ds:
        return 1.0
    total = abs(sum(int(d) for d in diffs))
    counts = {0: 1}
    for d in ds:
        nxt: dict[int, int] = {}
        for v, k in counts.items():
            nxt[v + d] = nxt.get(v + d, 0) + k
            nxt[v - d] = nxt.get(v - d, 0) + k
        counts = nxt
    extreme = sum(k for v, k in counts.items() if abs(v) >= total)
    return min(1.0, extreme / 2 ** len(ds))


def paired_rates(pairs: Iterable[tuple[bool | None, bool | None]], confidence: float = 0.95) -> dict:
    """Two rates on the same items, from (first, second) verdict pairs; a pair with a None is left out.

    {'n', 'a', 'b', 'c', 'd', 'rate_first', 'rate_second', 'difference' (first - second),
    'interval' (Newcombe method 10), 'p_value' (exact McNemar on b, c), 'n_excluded'}."""
    ps = list(pairs)
    kept = [(bool(x), bool(y)) for x, y in ps if x is not None and y is not None]
    a = sum(1 for x, y in kept if x and y)
    b = sum(1 for x, y in kept if x and not y)
    c = sum(1 for x, y in kept if not x and y)
    d = len(kept) - a - b - c
    n = len(kept)
    ci = paired_difference_interval(a, b, c, d, confidence)
    return {"n": n, "a": a, "b": b, "c": c, "d": d, "n_excluded": len(ps) - n,
            "rate_first": (a + b) / n if n else None, "rate_second": (a + c) / n if n else None,
            "difference": (b - c) / n if n else None, "interval": list(ci) if ci else None,
            "p_value": mcnemar_exact(b, c), "confidence": confidence}


def agreement(labels: list[bool], preds: list[bool | None]) -> dict:
    """n, accuracy and Cohen's kappa over the rows with a prediction."""
    from sklearn.metrics import cohen_kappa_score

    pairs = [(y, p) for y, p in zip(labels, preds) if p is not None]
    n = len(pairs)
    if n == 0:
        return {"n": 0, "unlabelled": len(labels), "accuracy": float("nan"), "kappa": float("nan")}
    ys, ps = [int(y) for y, _ in pairs], [int(p) for _, p in pairs]
    kappa = float(cohen_kappa_score(ys, ps)) if len(set(ys) | set(ps)) > 1 else float("nan")
    return {"n": n, "unlabelled": len(labels) - n, "accuracy": sum(y == p for y, p in zip(ys, ps)) / n,
            "kappa": kappa, "human_positive_rate": sum(ys) / n, "judge_positive_rate": sum(ps) / n}


def difference_interval(k1: int, n1: int, k2: int, n2: int, confidence: float = 0.95) -> tuple[float, float] | None:
    """Interval for p1 - p2 of two independent proportions (different items): Newcombe's hybrid
    score interval (R. G. Newcombe 1998, "Interval estimation for the difference between
    independent proportions: comparison of eleven methods", Statistics in Medicine 17:873-890,
    method 10): the Wilson intervals (l1, u1), (l2, u2) combined by "square and add",

        L = D - sqrt((p1 - l1)^2 + (u2 - p2)^2),   U = D + sqrt((u1 - p1)^2 + (p2 - l2)^2).

    Newcombe's worked example 56/70 - 48/80 gives [0.0524, 0.3339]. None when either n is 0."""
    if n1 == 0 or n2 == 0:
        return None
    l1, u1 = wilson_interval(k1, n1, confidence)
    l2, u2 = wilson_interval(k2, n2, confidence)
    p1, p2 = k1 / n1, k2 / n2
    d = p1 - p2
    return (max(-1.0, d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)),
            min(1.0, d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)))


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order (S. Holm 1979, "A simple sequentially
    rejective multiple test procedure", Scandinavian Journal of Statistics 6:65-70).

    Sorted ascending p_(1) <= ... <= p_(m), the adjusted p_(i) is max over j <= i of
    min(1, (m - j + 1) p_(j)); rejecting where the adjusted p < alpha keeps the chance of any false
    "moved" at most alpha over all m tests, whatever their dependence. Worked: [0.01, 0.04, 0.03,
    0.005] -> [0.03, 0.06, 0.06, 0.02]."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    out = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        out[i] = running
    return out
