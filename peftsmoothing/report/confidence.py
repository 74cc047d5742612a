"""A lower bound on the smoothed classifier's certified accuracy that holds with a stated
probability (Cohen, Rosenfeld & Kolter, 2019), for fixed-``n`` and sequential logs alike.

Why it holds. A certificate says "the smoothed classifier ``g`` predicts this class everywhere
within this radius"; it is *wrong* when that is false. Each image's certificate is wrong with
probability at most ``alpha``, the run's alpha (in a sequential mode too: whichever look
sampling stops at, all looks' bounds hold at once with probability ``>= 1 - alpha``, by the
union bound over the looks), and images draw their noise from their own seeded streams, so the
certificates are wrong independently. The number ``F`` of wrong certificates among ``m`` images
is therefore stochastically dominated by ``Binomial(m, alpha)``: with probability at least
``confidence``, ``F <= q``, the ``confidence`` quantile of ``Binomial(m, alpha)``.

An image counted by the approximate certified accuracy at ``r`` (correct class, certified
radius ``>= r``) whose certificate is right is truly certified at ``r``; at most ``F`` counted
images have a wrong one. Hence, with probability at least ``confidence``, at every radius at
once, the smoothed classifier's true certified accuracy on these images is at least
``(certified count - q) / m``. A sequential row's own ``alpha`` (the level of the look where it
stopped) is *not* the alpha to use: the run's ``alpha`` bounds the certificate as a whole.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

import numpy as np

from ..core.validation import check_alpha, check_int, check_real

__all__ = ["Certified", "certified_accuracy_bound", "run_alpha", "wrong_certificates_at_most"]


class Certified(Protocol):
    """What the bound, the tables (``report.tables``) and the plots (``report.plots``) use of
    a [`CertificationReport`][peftsmoothing.CertificationReport]."""

    name: str | None
    correct: np.ndarray
    radius: np.ndarray
    pa_lower: np.ndarray
    settings: dict[str, Any] | None

    @property
    def acr(self) -> float: ...

    @property
    def abstain_rate(self) -> float: ...

    def __len__(self) -> int: ...

    def certified_accuracy(self, radii: Iterable[float] | None = None) -> dict[float, float]: ...

    def curve(self, max_radius: float | None = None, points: int = 401) -> tuple[Any, Any]: ...


def wrong_certificates_at_most(images: int, alpha: float, confidence: float = 0.95) -> int:
    """How many of ``images`` certificates, each wrong w.p. ``<= alpha``, are wrong at most,
    with probability ``>= confidence``: the ``confidence`` quantile of ``Binomial(images,
    alpha)``.

    Examples:
        >>> wrong_certificates_at_most(10, 0.001)  # 0.999 ** 10 = 0.990 >= 0.95
        0
        >>> wrong_certificates_at_most(500, 0.001)  # Cohen et al.'s CIFAR-10 run
        2
    """
    from scipy.stats import binom  # here: scipy costs ~0.3 s that `report --help` need not pay

    m = check_int(images, "images", minimum=0)
    a = check_alpha(alpha)
    c = check_real(confidence, "confidence", low=0.0, high=1.0, low_open=True, high_open=True)
    return int(binom.ppf(c, m, a)) if m else 0


def run_alpha(report: Certified) -> float:
    """The alpha that bounds each certificate of the report's run.

    The settings file's ``alpha`` (any mode; or, without a log, the run's). A format-2 row's
    ``alpha`` alone is not enough: in a sequential run it is the level of one look, smaller
    than the run's; format-1 and Cohen rows record none.

    Raises:
        ValueError: When the logs do not say (no settings file: Cohen et al.'s own logs, or
            rows whose settings file is missing): pass ``alpha=`` yourself.

    Examples:
        >>> from peftsmoothing import CertificationReport
        >>> from peftsmoothing.report.certlog import LogRow
        >>> report = CertificationReport([LogRow(0, 1, 1, 0.3, 1, 0.7, 80, 100, 1.0, 0.001,
        ...                                      "0" * 64)])
        >>> report.settings = {"alpha": 0.001, "mode": "fixed"}
        >>> run_alpha(report)
        0.001
    """
    alpha = (report.settings or {}).get("alpha")
    if alpha is None:
        raise ValueError(
            "the logs do not record the run's alpha (Cohen et al.'s layout, or a log without "
            "its settings file): pass alpha= (the alpha the run was certified with)"
        )
    return check_alpha(alpha)


def certified_accuracy_bound(
    report: Certified,
    radii: Iterable[float],
    confidence: float = 0.95,
    alpha: float | None = None,
) -> dict[float, float]:
    """Lower bound on the smoothed classifier's certified accuracy at each radius, holding at
    all radii at once with probability ``>= confidence`` (see the module docstring).

    Args:
        report: The certificates (a [`CertificationReport`][peftsmoothing.CertificationReport]).
        radii: Radii, >= 0.
        confidence: Probability that the bound holds, in (0, 1).
        alpha: The run's alpha; default ``run_alpha(report)``.

    Returns:
        ``{radius: lower bound}`` (never below 0).

    Raises:
        ValueError: For an empty report, or when the run's alpha is unknown.

    Examples:
        >>> from peftsmoothing import CertificationReport
        >>> from peftsmoothing.report.certlog import LogRow
        >>> rows = [LogRow(i, 0, 0, 0.5, 1, 0.9, 95, 100, 1.0) for i in range(100)]
        >>> certified_accuracy_bound(CertificationReport(rows), [0.5], alpha=0.01)  # 3 wrong
        {0.5: 0.97}
    """
    m = len(report)
    if not m:
        raise ValueError("the report holds no certificates")
    a = run_alpha(report) if alpha is None else alpha  # checked by wrong_certificates_at_most
    q = wrong_certificates_at_most(m, a, confidence)
    return {
        float(r): max(0.0, float(np.sum(report.correct & (report.radius >= r)) - q) / m)
        for r in radii
    }
