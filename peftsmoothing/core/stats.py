"""Confidence bounds and tests for randomized smoothing (pure functions, no torch).

Everything a certificate's soundness rests on lives here, small enough to check by hand:
the exact one-sided Clopper-Pearson lower bound of a binomial proportion, the two-sided
binomial test used by PREDICT, and the certified L2 radius ``sigma * Phi^-1(pA_lower)`` of
Cohen, Rosenfeld & Kolter (2019). It also holds [`ABSTAIN`][peftsmoothing.ABSTAIN], the prediction
of a smoothed classifier that abstains, so that every module reading or writing predictions shares
one leaf.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from .validation import check_alpha, check_int, check_positive_int, check_real, check_sigma

__all__ = [
    "ABSTAIN",
    "abstains",
    "binomial_pvalue",
    "certified_radius",
    "certify_bound",
    "clopper_pearson_lower",
    "clopper_pearson_upper",
    "predict_from_counts",
]

ABSTAIN: Final[int] = -1
"""Prediction returned when the smoothed classifier abstains."""


def _check_counts(k: object, n: object) -> tuple[int, int]:
    n_ = check_positive_int(n, "n")
    return check_int(k, "the count k", minimum=0, maximum=n_), n_


def clopper_pearson_lower(k: int, n: int, alpha: float) -> float:
    """Exact one-sided ``(1 - alpha)`` Clopper-Pearson lower confidence bound of ``p``.

    For ``k ~ Binomial(n, p)``, ``P(clopper_pearson_lower(k, n, alpha) > p) <= alpha`` for
    every ``p``. This is ``Beta(alpha; k, n - k + 1)``, the ``alpha`` quantile of a beta
    distribution, and 0 when ``k == 0``. With ``k == n`` it equals ``alpha ** (1 / n)``.

    Args:
        k: Number of successes, ``0 <= k <= n``.
        n: Number of trials, ``n >= 1``.
        alpha: Probability that the bound exceeds the true ``p``, in (0, 1).

    Returns:
        The lower bound, in ``[0, 1)``.

    Raises:
        ValueError: For a count outside ``[0, n]``, ``n < 1`` or ``alpha`` outside (0, 1).

    Examples:
        >>> round(clopper_pearson_lower(100, 100, 0.001), 6)  # 0.001 ** (1 / 100)
        0.933254
        >>> clopper_pearson_lower(0, 100, 0.001)
        0.0
    """
    k_, n_ = _check_counts(k, n)
    a = check_alpha(alpha)
    if k_ == 0:
        return 0.0
    from scipy.stats import beta  # here: importing scipy costs ~0.3 s the CLI need not pay

    return float(beta.ppf(a, k_, n_ - k_ + 1))


def clopper_pearson_upper(k: int, n: int, alpha: float) -> float:
    """Exact one-sided ``(1 - alpha)`` Clopper-Pearson upper confidence bound of ``p``.

    ``1 - clopper_pearson_lower(n - k, n, alpha)`` (the bound for failures, mirrored); 1.0
    when ``k == n``. For ``k ~ Binomial(n, p)``, ``P(upper < p) <= alpha``.

    Args:
        k: Number of successes, ``0 <= k <= n``.
        n: Number of trials, ``n >= 1``.
        alpha: Probability that the bound falls below the true ``p``, in (0, 1).

    Returns:
        The upper bound, in ``(0, 1]``.

    Examples:
        >>> round(clopper_pearson_upper(0, 100, 0.001), 6)  # 1 - 0.001 ** (1 / 100)
        0.066746
        >>> clopper_pearson_upper(100, 100, 0.001)
        1.0
    """
    k_, n_ = _check_counts(k, n)
    return 1.0 - clopper_pearson_lower(n_ - k_, n_, alpha)


def binomial_pvalue(k: int, n: int, p: float = 0.5) -> float:
    """Two-sided p-value of the exact binomial test of ``H0: P(success) = p``.

    PREDICT (Cohen et al. 2019) uses it on the two largest class counts ``nA`` and ``nB``:
    ``binomial_pvalue(nA, nA + nB)``; it abstains unless the p-value is at most ``alpha``.

    Args:
        k: Number of successes, ``0 <= k <= n``.
        n: Number of trials, ``n >= 1``.
        p: Success probability under the null hypothesis, in (0, 1).

    Returns:
        The p-value, in ``(0, 1]``.

    Raises:
        ValueError: For a count outside ``[0, n]``, ``n < 1`` or ``p`` outside (0, 1).

    Examples:
        >>> binomial_pvalue(10, 10)  # 2 * 0.5 ** 10
        0.001953125
        >>> binomial_pvalue(5, 10)
        1.0
    """
    k_, n_ = _check_counts(k, n)
    check_real(p, "p", low=0.0, high=1.0, low_open=True, high_open=True)
    from scipy.stats import binomtest

    return float(binomtest(k_, n_, float(p), alternative="two-sided").pvalue)


def predict_from_counts(counts: Iterable[int], alpha: float) -> int:
    """PREDICT's decision (Cohen et al. 2019) from the class counts of ``n`` noisy samples.

    Returns the most frequent class if the two-sided binomial
    test of the two largest counts rejects equality at level ``alpha``, else
    [`ABSTAIN`][peftsmoothing.ABSTAIN]: the returned class then differs from the smoothed
    classifier's with probability at most ``alpha``.

    Args:
        counts: Votes per class (at least two classes; a sequence, tensor or array), e.g. from
            [`SmoothedClassifier.vote_counts`][peftsmoothing.SmoothedClassifier.vote_counts].
        alpha: Probability of returning a class other than the smoothed classifier's.

    Returns:
        The class index, or ``ABSTAIN`` (-1).

    Raises:
        ValueError: If a count is not a non-negative integer, there are fewer than two
            classes, no votes at all, or ``alpha`` is outside (0, 1).

    Examples:
        >>> predict_from_counts([2, 95, 3], alpha=0.001)
        1
        >>> predict_from_counts([48, 52], alpha=0.001)  # too close to call
        -1
    """
    if hasattr(counts, "tolist"):  # a tensor (e.g. from vote_counts) or a numpy array
        counts = counts.tolist()
    values = [check_int(c, "each class count", minimum=0) for c in counts]
    a = check_alpha(alpha)
    if len(values) < 2:
        raise ValueError(f"predict_from_counts needs the counts of >= 2 classes, got {values}")
    n_a, n_b = sorted(values, reverse=True)[:2]
    if n_a == 0:
        raise ValueError("predict_from_counts got no votes (every count is 0)")
    return ABSTAIN if binomial_pvalue(n_a, n_a + n_b) > a else values.index(n_a)


def abstains(pa_lower: float) -> bool:
    """CERTIFY's abstain rule: no class is certified when ``pa_lower < 0.5``.

    Examples:
        >>> abstains(0.49), abstains(0.5)
        (True, False)
    """
    return pa_lower < 0.5


def certify_bound(sigma: float, count: int, n: int, alpha: float) -> tuple[float, float]:
    """``(pa_lower, radius)`` of CERTIFY from ``count`` of ``n`` votes for the selected class.

    ``pa_lower`` is the one-sided Clopper-Pearson bound at level ``alpha``; the radius is
    ``sigma * Phi^-1(pa_lower)``, or 0.0 when CERTIFY abstains (``abstains(pa_lower)``).

    Examples:
        >>> pa_lower, radius = certify_bound(0.5, 100, 100, 0.001)
        >>> round(pa_lower, 6), round(radius, 4)  # 0.001 ** (1 / 100)
        (0.933254, 0.7502)
        >>> certify_bound(0.5, 40, 100, 0.001)[1]
        0.0
    """
    pa_lower = clopper_pearson_lower(count, n, alpha)
    return pa_lower, certified_radius(sigma, pa_lower)  # 0.0 when CERTIFY abstains


def certified_radius(sigma: float, pa_lower: float) -> float:
    """Certified L2 radius ``sigma * Phi^-1(pa_lower)`` of Cohen et al. (2019), Theorem 1.

    Only meaningful when ``pa_lower >= 0.5`` (otherwise CERTIFY abstains); below 0.5 this
    returns 0.0 rather than a negative radius.

    Args:
        sigma: Noise standard deviation (pixel units of [0, 1] images), > 0.
        pa_lower: Lower confidence bound of the top class probability, in [0, 1).

    Returns:
        The radius (0.0 when ``pa_lower <= 0.5``).

    Raises:
        ValueError: If ``sigma <= 0`` or ``pa_lower`` is outside ``[0, 1)``.

    Examples:
        >>> round(certified_radius(0.5, 0.975), 4)  # 0.5 * 1.96
        0.98
        >>> certified_radius(0.5, 0.3)
        0.0
    """
    s = check_sigma(sigma)
    p = check_real(pa_lower, "pa_lower", low=0.0, high=1.0, high_open=True)
    if p <= 0.5:
        return 0.0
    from scipy.stats import norm

    return s * float(norm.ppf(p))
