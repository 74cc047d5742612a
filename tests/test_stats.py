"""Confidence bounds and tests, checked against numbers derived independently of the code."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import binom, norm

from peftsmoothing.core.stats import (
    binomial_pvalue,
    certified_radius,
    clopper_pearson_lower,
    predict_from_counts,
)
from peftsmoothing.core.validation import check_alpha, check_positive_int, check_sigma


@pytest.mark.parametrize("n", [1, 10, 100, 1000, 100_000])
@pytest.mark.parametrize("alpha", [0.5, 0.05, 0.001])
def test_all_successes_bound_is_alpha_to_the_one_over_n(n: int, alpha: float) -> None:
    # P(Binomial(n, p) >= n) = p**n = alpha  <=>  p = alpha**(1/n)
    assert clopper_pearson_lower(n, n, alpha) == pytest.approx(alpha ** (1 / n), abs=1e-12)


def test_zero_successes_bound_is_zero() -> None:
    assert clopper_pearson_lower(0, 50, 0.01) == 0.0


@pytest.mark.parametrize(("k", "n"), [(1, 10), (7, 10), (55, 100), (999, 1000)])
def test_bound_solves_the_binomial_tail_equation(k: int, n: int) -> None:
    # The exact one-sided lower bound L solves P(Binomial(n, L) >= k) = alpha.
    alpha = 0.01
    low = clopper_pearson_lower(k, n, alpha)
    assert binom.sf(k - 1, n, low) == pytest.approx(alpha, rel=1e-9)


@pytest.mark.parametrize("n", [5, 30, 100])
def test_bound_exceeds_p_with_probability_at_most_alpha(n: int) -> None:
    # Exact coverage: sum the binomial pmf over the k whose bound lies above p.
    alpha = 0.05
    bounds = np.array([clopper_pearson_lower(k, n, alpha) for k in range(n + 1)])
    for p in np.linspace(0.001, 0.999, 199):
        miss = binom.pmf(np.arange(n + 1), n, p)[bounds > p].sum()
        assert miss <= alpha + 1e-12


def test_binomial_pvalue_matches_direct_sum() -> None:
    assert binomial_pvalue(10, 10) == pytest.approx(2 * 0.5**10, rel=1e-12)
    assert binomial_pvalue(5, 10) == 1.0
    # two-sided, symmetric null: P(X <= 2) + P(X >= 8) for X ~ Binomial(10, 1/2)
    expected = sum(math.comb(10, k) for k in (0, 1, 2, 8, 9, 10)) / 2**10
    assert binomial_pvalue(8, 10) == pytest.approx(expected, rel=1e-12)
    assert binomial_pvalue(2, 10) == pytest.approx(expected, rel=1e-12)


def test_certified_radius() -> None:
    assert certified_radius(0.5, 0.975) == pytest.approx(0.5 * norm.ppf(0.975))
    assert certified_radius(0.25, 0.5) == 0.0
    assert certified_radius(0.25, 0.1) == 0.0
    assert certified_radius(1.0, 0.8413447460685429) == pytest.approx(1.0, rel=1e-9)


def test_predict_from_counts_is_the_two_sided_test_of_the_top_two() -> None:
    # 20 of 20: p = 2 * 0.5**20 < 0.001; 9 of 9: p = 2 * 0.5**9 = 0.0039 > 0.001
    assert predict_from_counts([0, 20, 0], 0.001) == 1
    assert predict_from_counts([0, 9], 0.001) == -1
    assert predict_from_counts(np.array([0, 9]), 0.01) == 1  # numpy counts are integers too
    assert predict_from_counts(torch.tensor([0, 9]), 0.01) == 1  # as vote_counts returns them
    # only the top two counts enter the test: 30 vs 10 (p = 0.0022), the third is ignored
    assert binomial_pvalue(30, 40) == pytest.approx(2 * binom.cdf(10, 40, 0.5))
    assert predict_from_counts([30, 10, 0], 0.01) == 0
    assert predict_from_counts([5, 5, 0], 0.5) == -1  # a tie never wins


@pytest.mark.parametrize(
    ("counts", "match"),
    [([], ">= 2 classes"), ([5], ">= 2 classes"), ([0, 0], "no votes"),
     ([-1, 3], "class count"), ([1.5, 3], "class count"), ([True, 3], "class count")],
)  # fmt: skip
def test_predict_from_counts_refuses_bad_counts(counts: list[object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        predict_from_counts(counts, 0.01)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: clopper_pearson_lower(11, 10, 0.1), "count k"),
        (lambda: clopper_pearson_lower(-1, 10, 0.1), "count k"),
        (lambda: clopper_pearson_lower(1, 0, 0.1), "n must be"),
        (lambda: clopper_pearson_lower(1, 10, 0.0), "alpha"),
        (lambda: clopper_pearson_lower(1, 10, 1.0), "alpha"),
        (lambda: clopper_pearson_lower(1, 10, float("nan")), "alpha"),
        (lambda: binomial_pvalue(3, 10, p=1.0), "p must be"),
        (lambda: certified_radius(0.0, 0.9), "sigma"),
        (lambda: certified_radius(0.5, 1.0), "pa_lower"),
        (lambda: check_sigma(float("inf")), "sigma"),
        (lambda: check_sigma(-0.5), "sigma"),
        (lambda: check_alpha("0.1"), "alpha"),
        (lambda: check_positive_int(2.5, "n"), "n must"),
        (lambda: check_positive_int(True, "n"), "n must"),
    ],
)
def test_validation(call: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()  # type: ignore[operator]
