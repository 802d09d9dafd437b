"""Paired proportions: the exact McNemar test and Newcombe's paired interval, against hand-computed
and published values."""

from __future__ import annotations

import pytest
from scipy.stats import binomtest

from synthpref.stats import mcnemar_exact, paired_difference_interval, paired_rates


@pytest.mark.parametrize("b,c,p", [
    (0, 6, 2 / 2 ** 6),  # 0.03125: all six discordant prompts went one way
    (1, 9, 2 * (1 + 10) / 2 ** 10),  # 0.021484375
    (6, 0, 0.03125),
    (0, 5, 0.0625),  # five of five is not enough at the 5% level
    (3, 3, 1.0),
    (0, 0, 1.0),  # no discordant pair: no evidence either way
])
def test_mcnemar_exact_hand_computed(b, c, p):
    assert mcnemar_exact(b, c) == pytest.approx(p, rel=1e-12)


def test_mcnemar_exact_is_the_binomial_test():
    for b in range(0, 15):
        for c in range(0, 15):
            if b + c:
                assert mcnemar_exact(b, c) == pytest.approx(binomtest(b, b + c, 0.5).pvalue, rel=1e-9)
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 2)


def test_newcombe_paired_interval_published_example():
    # Fagerland, Lydersen & Laake (2017), Statistical Analysis of Contingency Tables, ch. 8: complete
    # response before/after consolidation therapy (Cavo et al. 2012), table [[59, 6], [16, 80]]:
    # estimate -0.0621, Newcombe square-and-add (method 10) 95% CI -0.1186 to -0.0046.
    lo, hi = paired_difference_interval(59, 6, 16, 80)
    assert (6 - 16) / 161 == pytest.approx(-0.0621, abs=5e-5)
    assert lo == pytest.approx(-0.1186, abs=5e-5) and hi == pytest.approx(-0.0046, abs=5e-5)


def test_newcombe_paired_interval_properties():
    # Swapping the two measurements mirrors the interval.
    lo, hi = paired_difference_interval(10, 3, 9, 18)
    lo2, hi2 = paired_difference_interval(10, 9, 3, 18)
    assert (lo, hi) == pytest.approx((-hi2, -lo2))
    # No discordant pair: an interval around 0 that is not a point (unlike Wald).
    lo, hi = paired_difference_interval(5, 0, 0, 15)
    assert lo < 0 < hi
    # Everything flips: the difference is -1 and the interval stays inside [-1, 1].
    lo, hi = paired_difference_interval(0, 0, 20, 0)
    assert lo == -1.0 and -1 < hi < 0
    # More pairs, same proportions: narrower.
    w_small = (lambda x: x[1] - x[0])(paired_difference_interval(4, 2, 6, 8))
    w_big = (lambda x: x[1] - x[0])(paired_difference_interval(40, 20, 60, 80))
    assert w_big < w_small
    assert paired_difference_interval(0, 0, 0, 0) is None


def test_paired_rates_counts_and_exclusions():
    pairs = [(True, True), (True, False), (False, True), (False, True), (False, False), (None, True), (False, None)]
    r = paired_rates(pairs)
    assert (r["n"], r["a"], r["b"], r["c"], r["d"], r["n_excluded"]) == (5, 1, 1, 2, 1, 2)
    assert r["rate_first"] == pytest.approx(2 / 5) and r["rate_second"] == pytest.approx(3 / 5)
    assert r["difference"] == pytest.approx(-1 / 5)
    assert r["p_value"] == mcnemar_exact(1, 2)
    assert r["interval"] == list(paired_difference_interval(1, 1, 2, 1))


def test_signflip_exact_hand_computed_and_equal_to_mcnemar_with_one_pair_per_cluster():
    import itertools

    from synthpref.stats import signflip_exact

    assert signflip_exact([1, 1, 1]) == 0.25 and signflip_exact([2, 1]) == 0.5 and signflip_exact([0, 0]) == 1.0
    for b in range(6):
        for c in range(6):
            assert signflip_exact([1] * b + [-1] * c) == pytest.approx(mcnemar_exact(b, c), rel=1e-12)
    ds = [3, -1, 2, 2, 0, -2, 1]  # brute force over all 2^6 sign vectors of the non-zero clusters
    nz = [d for d in ds if d]
    t = abs(sum(ds))
    brute = sum(abs(sum(s * d for s, d in zip(signs, nz))) >= t for signs in itertools.product((1, -1), repeat=len(nz)))
    assert signflip_exact(ds) == pytest.approx(brute / 2 ** len(nz))
