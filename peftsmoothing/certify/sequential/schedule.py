"""Look schedules and alpha spending of sequential CERTIFY (see ``certify.sequential``).

A ``Schedule`` holds the cumulative estimation-sample counts at which a policy is
consulted and the share ``alpha_k`` of ``alpha`` each look may spend (``sum <= alpha``).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Final

from ...core.stats import certified_radius, clopper_pearson_lower
from ...core.validation import check_alpha, check_int, check_positive_int, check_real

DEFAULT_FIRST_LOOK: Final[int] = 256
"""Estimation samples at the first look (one or two GPU batches; see ``looks``)."""

DEFAULT_GROWTH: Final[float] = 2.0
"""Ratio of consecutive looks: at most ``2x`` the samples a decision needed."""

DEFAULT_FINAL_SHARE: Final[float] = 0.5
"""Share of ``alpha`` that the final look gets (see ``spend_alpha``)."""


# --------------------------------------------------------------------------- schedule
def looks(
    n_max: int, first: int = DEFAULT_FIRST_LOOK, growth: float = DEFAULT_GROWTH
) -> tuple[int, ...]:
    """Cumulative estimation-sample counts at which a policy is consulted, ending at ``n_max``.

    Geometric: ``first, first * growth, first * growth**2, ...`` (rounded), then ``n_max``.
    A last step shorter than ``sqrt(growth)`` is merged into the final look (a look that adds
    few samples costs a share of alpha and buys little). Defaults: ``first = 256`` and
    ``growth = 2`` give 10 looks for ``n_max = 100_000`` (256, 512, ..., 65_536, 100_000):
    a point is never sampled more than twice as long as the schedule needed, and the many
    looks cost little because a bound's width grows only like ``sqrt(log(1 / alpha_k))``.

    Args:
        n_max: The largest number of estimation samples (the final look), ``>= 1``.
        first: Samples at the first look, ``>= 1`` (``>= n_max`` gives the single look
            ``(n_max,)``, i.e. fixed-``n`` CERTIFY).
        growth: Ratio of consecutive looks, ``> 1``.

    Returns:
        A strictly increasing tuple of ints whose last element is ``n_max``.

    Raises:
        ValueError: For ``n_max`` or ``first`` < 1, or ``growth <= 1``.

    Examples:
        >>> looks(100_000)
        (256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 100000)
        >>> looks(1000, first=100, growth=3)
        (100, 300, 1000)
        >>> looks(500, first=1000)
        (500,)
    """
    n = check_positive_int(n_max, "n_max")
    f = check_positive_int(first, "first")
    g = check_real(growth, "growth", low=1.0, low_open=True)
    out: list[int] = []
    value = float(f)
    while (step := round(value)) < n:
        if not out or step > out[-1]:
            out.append(step)
        value *= g
    while out and n / out[-1] < math.sqrt(g):
        out.pop()
    return (*out, n)


def spend_alpha(
    alpha: float, n_looks: int, final_share: float = DEFAULT_FINAL_SHARE
) -> tuple[float, ...]:
    """Split ``alpha`` over ``n_looks`` looks: ``final_share`` to the last, the rest evenly.

    Union bound (Bonferroni): if look ``k``'s bound fails with probability at most
    ``alpha_k``, all bounds hold at once with probability at least ``1 - sum_k alpha_k >=
    1 - alpha`` (the multi-stage test of Horváth et al., ICLR 2022, splits ``alpha`` evenly).
    Giving half to the final look keeps fixed-``n`` CERTIFY's largest radius almost intact:
    ``alpha -> alpha / 2`` moves the largest radius ``sigma * Phi^-1((alpha / 2) ** (1 / n))``
    only from 3.8115 to 3.7878 sigma at ``n = 100_000``, ``alpha = 0.001`` (-0.024 sigma,
    0.6 %; at ``pA <= 0.99`` the loss is below 0.003 sigma), where an even split over 10 looks
    would lose 0.072 sigma. The early looks decide only points with a wide margin, where a
    smaller ``alpha_k`` costs little. The returned
    values are nudged down by a few ulps if needed so that their floating-point sum never
    exceeds ``alpha``.

    Args:
        alpha: Total failure probability, in (0, 1).
        n_looks: Number of looks, ``>= 1`` (one look gets all of ``alpha``).
        final_share: Share of ``alpha`` for the final look, in (0, 1].

    Returns:
        ``(alpha_1, ..., alpha_K)``, all positive, summing to at most ``alpha``.

    Raises:
        ValueError: For ``alpha`` outside (0, 1), ``n_looks < 1``, ``final_share`` outside
            (0, 1], or ``final_share == 1`` with more than one look.

    Examples:
        >>> spend_alpha(0.001, 3)
        (0.00025, 0.00025, 0.0005)
        >>> spend_alpha(0.05, 1)
        (0.05,)
    """
    a = check_alpha(alpha)
    k = check_positive_int(n_looks, "n_looks")
    share = check_real(final_share, "final_share", low=0.0, high=1.0, low_open=True)
    if k == 1:
        return (a,)
    if share == 1.0:
        raise ValueError("final_share must be < 1 when there is more than one look")
    last = a * share
    out = [(a - last) / (k - 1)] * (k - 1) + [last]
    while max(math.fsum(out), sum(out)) > a:  # shave ulps until even a naive sum is <= a
        out = [math.nextafter(v, 0.0) for v in out]
    return tuple(out)


def max_certifiable_radius(sigma: float, n: int, alpha: float) -> float:
    """The largest radius ``n`` estimation samples can certify: all ``n`` votes for ``c_A``.

    ``sigma * Phi^-1(alpha ** (1 / n))``, i.e. [`certified_radius`][peftsmoothing.certified_radius]
    of the Clopper-Pearson bound with ``k = n``.

    Args:
        sigma: Noise standard deviation, > 0.
        n: Number of estimation samples, ``>= 1``.
        alpha: Failure probability of the bound, in (0, 1).

    Returns:
        The radius (0.0 if even ``n`` successes give ``pa_lower <= 0.5``).

    Examples:
        >>> round(max_certifiable_radius(1.0, 100_000, 0.001), 4)
        3.8115
        >>> round(max_certifiable_radius(1.0, 100_000, 0.0005), 4)  # the final look's share
        3.7878
    """
    return certified_radius(sigma, clopper_pearson_lower(n, n, alpha))


@dataclass(frozen=True)
class Schedule:
    """Looks and the alpha each look may spend (a union bound: ``sum(alphas) <= alpha``).

    Attributes:
        looks: Strictly increasing cumulative estimation-sample counts; the last is ``n_max``.
        alphas: ``alpha_k`` of each look: look ``k``'s Clopper-Pearson bound is at this level.
        alpha: The simultaneous level: with probability ``>= 1 - alpha`` every look's bound
            holds, so the bound at whichever look sampling stops is valid.

    Raises:
        ValueError: If the looks are not strictly increasing positive integers, the lengths
            differ, an ``alpha_k`` is not in (0, 1), or ``sum(alphas) > alpha``.

    Examples:
        >>> s = Schedule.create(n_max=1000, alpha=0.001, first=250)
        >>> s.looks, s.alphas, s.n_max
        ((250, 500, 1000), (0.00025, 0.00025, 0.0005), 1000)
    """

    looks: tuple[int, ...]
    alphas: tuple[float, ...]
    alpha: float

    def __post_init__(self) -> None:
        a = check_alpha(self.alpha)
        counts = tuple(check_positive_int(v, "a look") for v in self.looks)
        levels = tuple(check_alpha(v) for v in self.alphas)
        if not counts or len(counts) != len(levels):
            raise ValueError(
                f"looks and alphas must be non-empty and of equal length, got {len(counts)} "
                f"looks and {len(levels)} alphas"
            )
        if any(b <= a_ for a_, b in itertools.pairwise(counts)):
            raise ValueError(f"looks must be strictly increasing, got {counts}")
        if math.fsum(levels) > a:
            raise ValueError(
                f"the alphas sum to {math.fsum(levels)!r} > alpha = {a!r}: no union bound"
            )
        object.__setattr__(self, "looks", counts)
        object.__setattr__(self, "alphas", levels)
        object.__setattr__(self, "alpha", a)

    @classmethod
    def create(
        cls,
        n_max: int,
        alpha: float,
        *,
        first: int = DEFAULT_FIRST_LOOK,
        growth: float = DEFAULT_GROWTH,
        final_share: float = DEFAULT_FINAL_SHARE,
    ) -> Schedule:
        """The default schedule: ``looks`` with ``spend_alpha`` over them.

        Args:
            n_max: Largest number of estimation samples.
            alpha: Total failure probability.
            first: Samples at the first look.
            growth: Ratio of consecutive looks.
            final_share: Share of ``alpha`` for the final look.

        Returns:
            The schedule.

        Examples:
            >>> Schedule.create(100_000, 0.001).alphas[-1]
            0.0005
        """
        counts = looks(n_max, first=first, growth=growth)
        return cls(counts, spend_alpha(alpha, len(counts), final_share), alpha)

    @property
    def n_max(self) -> int:
        """The final look's sample count."""
        return self.looks[-1]

    @property
    def n_looks(self) -> int:
        """Number of looks."""
        return len(self.looks)

    def check_look(self, look: object, count: object) -> tuple[int, int]:
        """Validate a look index and the cumulative count observed there.

        Returns:
            ``(look, count)`` as ints.

        Raises:
            ValueError: If ``look`` is not in ``[0, n_looks)`` or ``count`` not in
                ``[0, looks[look]]``.

        Examples:
            >>> Schedule.create(1000, 0.01, first=500).check_look(1, 900)
            (1, 900)
        """
        k = check_int(look, "look", minimum=0, maximum=self.n_looks - 1)
        c = check_int(count, "count", minimum=0, maximum=self.looks[k])
        return k, c


# --------------------------------------------------------------------------- decisions
