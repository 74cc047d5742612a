"""Sequential, anytime-valid CERTIFY: look schedules, alpha spending and stopping policies.

Pure decision logic (numpy/scipy only, no torch). CERTIFY of Cohen, Rosenfeld & Kolter (2019)
draws ``n0`` selection samples to pick the class ``c_A`` and then ``n`` *independent*
estimation samples whose count ``k`` of ``c_A`` gives the one-sided Clopper-Pearson bound
``pa_lower`` at level ``alpha``. Here the estimation samples are drawn in stages that end at
the cumulative sample counts ("looks") of a :class:`Schedule`; after each look a policy says
whether to continue or stop. The caller only does::

    schedule = Schedule.create(n_max=100_000, alpha=0.001)
    policy = TargetRadiusPolicy(sigma=0.25, radius=0.5, schedule=schedule)
    count, drawn = 0, 0
    for look, n_k in enumerate(schedule.looks):
        count += votes_for_c_a(n_k - drawn)  # fresh estimation samples only
        drawn = n_k
        decision = policy.decide(look, count)
        if decision.stop:
            break
    # decision.pa_lower / decision.radius / decision.abstain -> a Certificate

(:func:`run_sequential` is that loop.) Soundness rests on one union bound (Bonferroni; the
multi-stage test of Horváth et al., ICLR 2022): look ``k`` uses the Clopper-Pearson bound at
level ``alpha_k`` with ``sum_k alpha_k <= alpha``, so with probability at least ``1 - alpha``
the bounds of *all* looks hold at once, whatever rule (even a data-dependent one, or the
caller running out of time) decides where sampling stops. Anytime-valid confidence sequences
(Voráček, NeurIPS 2024) are the continuous-monitoring version of the same idea. See
``docs/sequential.md`` for the derivation and the defaults.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal, Protocol

from scipy.stats import norm

from .stats import certified_radius, clopper_pearson_lower
from .validation import check_alpha, check_int, check_positive_int, check_real, check_sigma

__all__ = [
    "DEFAULT_FINAL_SHARE",
    "DEFAULT_FIRST_LOOK",
    "DEFAULT_GROWTH",
    "Decision",
    "MaxRadiusPolicy",
    "Reason",
    "Schedule",
    "SequentialPolicy",
    "TargetRadiusPolicy",
    "clopper_pearson_upper",
    "looks",
    "max_certifiable_radius",
    "run_sequential",
    "spend_alpha",
]

DEFAULT_FIRST_LOOK: Final[int] = 256
"""Estimation samples at the first look (one or two GPU batches; see :func:`looks`)."""

DEFAULT_GROWTH: Final[float] = 2.0
"""Ratio of consecutive looks: at most ``2x`` the samples a decision needed."""

DEFAULT_FINAL_SHARE: Final[float] = 0.5
"""Share of ``alpha`` that the final look gets (see :func:`spend_alpha`)."""

Reason = Literal["continue", "certified", "futile", "final", "max_radius", "converged"]
"""Why a policy continued or stopped at a look."""


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
    while round(value) < n:
        step = round(value)
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
    early = (a - last) / (k - 1)
    out = [early] * (k - 1) + [last]
    while max(math.fsum(out), sum(out)) > a:  # shave ulps until even a naive sum is <= a
        out = [math.nextafter(v, 0.0) for v in out]
    return tuple(out)


def max_certifiable_radius(sigma: float, n: int, alpha: float) -> float:
    """The largest radius ``n`` estimation samples can certify: all ``n`` votes for ``c_A``.

    ``sigma * Phi^-1(alpha ** (1 / n))``, i.e. :func:`~peftsmoothing.stats.certified_radius`
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
    n_ = check_positive_int(n, "n")
    return certified_radius(sigma, clopper_pearson_lower(n_, n_, alpha))


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
    n_ = check_positive_int(n, "n")
    k_ = check_int(k, "the count k", minimum=0, maximum=n_)
    return 1.0 - clopper_pearson_lower(n_ - k_, n_, alpha)


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
        """The default schedule: :func:`looks` with :func:`spend_alpha` over them.

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
@dataclass(frozen=True)
class Decision:
    """What a policy says at one look, and the certificate if sampling stops there.

    Attributes:
        stop: Whether to stop sampling now.
        reason: ``"continue"``; or why it stops: ``"certified"`` (target radius reached),
            ``"futile"`` (target not reachable within ``n_max``), ``"final"`` (last look),
            ``"max_radius"`` (cap reached) or ``"converged"`` (more samples would add less
            than the tolerance).
        look: Index of the look.
        n: Estimation samples drawn so far (``schedule.looks[look]``).
        count: Votes for ``c_A`` among them.
        pa_lower: Clopper-Pearson lower bound of ``pA`` at level ``alpha_spent``. Valid
            whatever look sampling stops at: all looks' bounds hold simultaneously with
            probability ``>= 1 - schedule.alpha``.
        radius: ``certified_radius(sigma, pa_lower)``; 0.0 when abstaining.
        alpha_spent: ``alpha_k`` of this look.

    Examples:
        >>> d = Decision(True, "final", 0, 100, 100, 0.933254, 0.75, 0.001)
        >>> d.abstain
        False
    """

    stop: bool
    reason: Reason
    look: int
    n: int
    count: int
    pa_lower: float
    radius: float
    alpha_spent: float

    @property
    def abstain(self) -> bool:
        """Whether CERTIFY abstains if it stops here (``pa_lower < 0.5``, as in ``certify``)."""
        return self.pa_lower < 0.5


def _bound(sigma: float, schedule: Schedule, look: int, count: int) -> tuple[float, float]:
    """``(pa_lower, radius)`` at a look, with CERTIFY's conventions."""
    pa_lower = clopper_pearson_lower(count, schedule.looks[look], schedule.alphas[look])
    radius = 0.0 if pa_lower < 0.5 else certified_radius(sigma, pa_lower)
    return pa_lower, radius


class SequentialPolicy(Protocol):
    """What :func:`run_sequential` (and a scheduler) needs from a policy."""

    @property
    def schedule(self) -> Schedule:
        """The looks and their alphas."""
        ...

    def decide(self, look: int, count: int) -> Decision:
        """The decision at ``look`` given the cumulative ``count`` of votes for ``c_A``."""
        ...


@dataclass(frozen=True)
class TargetRadiusPolicy:
    """Certify a fixed radius ``r`` with as few samples as possible (Horváth et al., 2022).

    At look ``k`` with ``count`` votes out of ``n_k``:

    * **certified** if ``pa_lower = CP_lower(count, n_k, alpha_k)`` gives a non-abstaining
      radius ``>= r`` (the same comparison as ``certify(...).radius >= r``);
    * **futile** (not certifiable within ``n_max``) if the Clopper-Pearson *upper* bound at
      level ``beta_k`` is below ``Phi(r / sigma)``, or if even ``n_max - n_k`` further votes
      could not certify at the final look;
    * otherwise **continue**; the final look stops with ``"certified"`` or ``"final"``.

    Futility stops never certify (they only stop early with a radius below ``r``), so they
    cannot cause a wrong certificate: soundness rests only on ``sum(alpha_k) <= alpha``. The
    futility budget ``beta`` (split evenly over the non-final looks) bounds the probability of
    giving up on a point whose ``pA >= Phi(r / sigma)``.

    Args:
        sigma: Noise standard deviation, > 0.
        radius: The target L2 radius ``r >= 0`` (``r = 0``: certify the prediction only).
        schedule: Looks and alphas.
        beta: Total futility budget in (0, 1); ``None``: ``schedule.alpha``.

    Examples:
        >>> policy = TargetRadiusPolicy(0.5, 0.25, Schedule.create(10_000, 0.001, first=1000))
        >>> d = policy.decide(0, 990)
        >>> d.stop, d.reason, d.n, d.radius >= 0.25
        (True, 'certified', 1000, True)
        >>> policy.decide(0, 600).reason
        'futile'
        >>> policy.decide(0, 720).reason
        'continue'
    """

    sigma: float
    radius: float
    schedule: Schedule
    beta: float | None = None
    _final_min: int = field(init=False, repr=False, compare=False, default=0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigma", check_sigma(self.sigma))
        object.__setattr__(self, "radius", check_real(self.radius, "radius", low=0.0))
        if not isinstance(self.schedule, Schedule):
            raise TypeError(f"schedule must be a Schedule, got {type(self.schedule).__name__}")
        b = self.schedule.alpha if self.beta is None else check_alpha(self.beta)
        object.__setattr__(self, "beta", b)
        last = self.schedule.n_looks - 1
        object.__setattr__(
            self, "_final_min", _first_true(lambda c: self._certifies(last, c), self.n_max)
        )

    @property
    def n_max(self) -> int:
        """The final look's sample count."""
        return self.schedule.n_max

    @property
    def p_target(self) -> float:
        """``Phi(r / sigma)``: the ``pA`` that certifies exactly radius ``r``."""
        return float(norm.cdf(self.radius / self.sigma))

    @property
    def betas(self) -> tuple[float, ...]:
        """Futility level of each look (0.0 at the final look, which never tests futility)."""
        k = self.schedule.n_looks
        if k == 1:
            return (0.0,)
        b = float(self.beta) / (k - 1)  # type: ignore[arg-type]
        return (b,) * (k - 1) + (0.0,)

    @property
    def reachable(self) -> bool:
        """Whether ``n_max`` samples can certify ``r`` at all (else every look is futile)."""
        return self._final_min <= self.n_max

    def _certifies(self, look: int, count: int) -> bool:
        pa_lower, radius = _bound(self.sigma, self.schedule, look, count)
        return pa_lower >= 0.5 and radius >= self.radius

    def _futile(self, look: int, count: int) -> bool:
        n_k = self.schedule.looks[look]
        if count + (self.n_max - n_k) < self._final_min:
            return True  # even all remaining samples voting for c_A would not certify
        upper = clopper_pearson_upper(count, n_k, self.betas[look])
        return upper < self.p_target

    def decide(self, look: int, count: int) -> Decision:
        """The decision after ``look`` (0-based) with ``count`` of its ``looks[look]`` votes.

        Args:
            look: Index into ``schedule.looks``.
            count: Cumulative votes for ``c_A`` among the first ``looks[look]`` estimation
                samples.

        Returns:
            The :class:`Decision`; its ``pa_lower`` and ``radius`` are valid whether or not
            the caller stops here.

        Raises:
            ValueError: For a look index out of range or a count outside ``[0, n_k]``.

        Examples:
            >>> p = TargetRadiusPolicy(1.0, 1.0, Schedule.create(1000, 0.01, first=500))
            >>> p.decide(1, 800).reason, p.decide(1, 900).reason
            ('final', 'certified')
        """
        k, c = self.schedule.check_look(look, count)
        pa_lower, radius = _bound(self.sigma, self.schedule, k, c)
        last = k == self.schedule.n_looks - 1
        if pa_lower >= 0.5 and radius >= self.radius:
            reason: Reason = "certified"
        elif last:
            reason = "final"
        elif self._futile(k, c):
            reason = "futile"
        else:
            reason = "continue"
        return Decision(
            stop=reason != "continue",
            reason=reason,
            look=k,
            n=self.schedule.looks[k],
            count=c,
            pa_lower=pa_lower,
            radius=radius,
            alpha_spent=self.schedule.alphas[k],
        )

    def thresholds(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Integer form of :meth:`decide`, for a vectorised (e.g. on-GPU) scheduler.

        At look ``k``, ``decide`` certifies iff ``count >= certify_at[k]`` and stops as futile
        iff ``count <= futile_at[k]`` (and it does not certify). ``certify_at[k] = n_k + 1``
        means it cannot certify at that look; ``futile_at[k] = -1`` that it never gives up.

        Returns:
            ``(certify_at, futile_at)``, one entry per look.

        Examples:
            >>> p = TargetRadiusPolicy(0.5, 0.25, Schedule.create(10_000, 0.001, first=1000))
            >>> certify_at, futile_at = p.thresholds()
            >>> p.decide(0, certify_at[0]).reason, p.decide(0, certify_at[0] - 1).reason
            ('certified', 'continue')
            >>> futile_at[-1]
            -1
        """
        certify_at: list[int] = []
        futile_at: list[int] = []
        for k, n_k in enumerate(self.schedule.looks):
            cert = _first_true(lambda c, k=k: self._certifies(k, c), n_k)  # type: ignore[misc]
            certify_at.append(cert)
            if k == self.schedule.n_looks - 1:
                futile_at.append(-1)
            else:
                not_futile = _first_true(
                    lambda c, k=k: not self._futile(k, c),  # type: ignore[misc]
                    n_k,
                )
                futile_at.append(min(not_futile, cert) - 1)
        return tuple(certify_at), tuple(futile_at)


def _first_true(predicate: Callable[[int], bool], n: int) -> int:
    """Smallest ``c`` in ``[0, n]`` with ``predicate(c)`` (monotone in ``c``); ``n + 1`` if none."""
    lo, hi = 0, n + 1
    while lo < hi:
        mid = (lo + hi) // 2
        if predicate(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


@dataclass(frozen=True)
class MaxRadiusPolicy:
    """Certify the largest radius, stopping early when more samples would add little.

    At look ``k`` the radius is ``certified_radius(sigma, CP_lower(count, n_k, alpha_k))``.
    Sampling stops at the final look, when the radius reaches ``max_radius``, or when a
    projection says that continuing to ``n_max`` would raise it by less than ``tolerance``:
    the projected radius is that of the Clopper-Pearson bound at the final look's alpha with
    the count ``n_max * p_hat``, ``p_hat = count / n_k`` (the point estimate carried forward).
    The projection is only a heuristic for *when* to stop; whatever it decides, the reported
    radius is sound, by the same union bound over looks.

    Args:
        sigma: Noise standard deviation, > 0.
        schedule: Looks and alphas.
        max_radius: Stop as soon as the radius is at least this (e.g. ``2 * sigma``);
            ``None``: no cap.
        tolerance: Smallest worthwhile radius gain; ``None``: ``0.05 * sigma``.

    Examples:
        >>> s = Schedule.create(100_000, 0.001, first=1000)
        >>> policy = MaxRadiusPolicy(0.25, s, max_radius=0.5)
        >>> policy.decide(0, 1000).reason  # radius 0.59 >= the cap
        'max_radius'
        >>> policy.decide(0, 400).reason  # p_hat = 0.4: abstains at any n
        'converged'
        >>> policy.decide(0, 900).reason  # 0.27 now, 0.32 projected: gain > 0.0125
        'continue'
    """

    sigma: float
    schedule: Schedule
    max_radius: float | None = None
    tolerance: float | None = None

    def __post_init__(self) -> None:
        s = check_sigma(self.sigma)
        object.__setattr__(self, "sigma", s)
        if not isinstance(self.schedule, Schedule):
            raise TypeError(f"schedule must be a Schedule, got {type(self.schedule).__name__}")
        cap = (
            math.inf
            if self.max_radius is None
            else check_real(self.max_radius, "max_radius", low=0.0, low_open=True)
        )
        object.__setattr__(self, "max_radius", cap)
        tol = (
            0.05 * s if self.tolerance is None else check_real(self.tolerance, "tolerance", low=0.0)
        )
        object.__setattr__(self, "tolerance", tol)

    def projected_radius(self, look: int, count: int) -> float:
        """Radius the final look would certify if the vote share stayed ``count / n_k``.

        Examples:
            >>> p = MaxRadiusPolicy(1.0, Schedule.create(100_000, 0.001, first=1000))
            >>> round(p.projected_radius(0, 1000), 4)  # all votes: Phi^-1(0.0005 ** 1e-5)
            3.7878
        """
        k, c = self.schedule.check_look(look, count)
        n_max = self.schedule.n_max
        projected = min(n_max, round(c / self.schedule.looks[k] * n_max))
        p = clopper_pearson_lower(projected, n_max, self.schedule.alphas[-1])
        return 0.0 if p < 0.5 else certified_radius(self.sigma, p)

    def decide(self, look: int, count: int) -> Decision:
        """The decision after ``look`` (0-based) with ``count`` of its ``looks[look]`` votes.

        Args:
            look: Index into ``schedule.looks``.
            count: Cumulative votes for ``c_A`` among the first ``looks[look]`` samples.

        Returns:
            The :class:`Decision`.

        Raises:
            ValueError: For a look index out of range or a count outside ``[0, n_k]``.

        Examples:
            >>> p = MaxRadiusPolicy(1.0, Schedule.create(1000, 0.01, first=500))
            >>> d = p.decide(1, 900)
            >>> d.stop, d.reason, round(d.radius, 3)
            (True, 'final', 1.141)
        """
        k, c = self.schedule.check_look(look, count)
        pa_lower, radius = _bound(self.sigma, self.schedule, k, c)
        if k == self.schedule.n_looks - 1:
            reason: Reason = "final"
        elif radius >= float(self.max_radius):  # type: ignore[arg-type]
            reason = "max_radius"
        elif self.projected_radius(k, c) - radius < float(self.tolerance):  # type: ignore[arg-type]
            reason = "converged"
        else:
            reason = "continue"
        return Decision(
            stop=reason != "continue",
            reason=reason,
            look=k,
            n=self.schedule.looks[k],
            count=c,
            pa_lower=pa_lower,
            radius=radius,
            alpha_spent=self.schedule.alphas[k],
        )


def run_sequential(policy: SequentialPolicy, draw: Callable[[int], int]) -> Decision:
    """Drive a policy: draw the samples up to each look, accumulate the count, ask, repeat.

    Args:
        policy: A :class:`TargetRadiusPolicy`, :class:`MaxRadiusPolicy` or compatible object.
        draw: ``draw(m)`` returns how many of ``m`` *fresh* estimation samples (independent of
            the selection samples that chose ``c_A`` and of earlier draws) vote for ``c_A``.

    Returns:
        The decision at the look where the policy stopped.

    Raises:
        ValueError: If ``draw`` returns a count outside ``[0, m]``.

    Examples:
        >>> policy = TargetRadiusPolicy(0.5, 0.5, Schedule.create(100_000, 0.001))
        >>> d = run_sequential(policy, lambda m: m)  # every sample votes for c_A
        >>> d.reason, d.n
        ('certified', 256)
    """
    count, drawn = 0, 0
    decision: Decision | None = None
    for look, n_k in enumerate(policy.schedule.looks):
        m = n_k - drawn
        votes = check_int(draw(m), "draw(m)", minimum=0, maximum=m)
        count, drawn = count + votes, n_k
        decision = policy.decide(look, count)
        if decision.stop:
            return decision
    assert decision is not None  # the final look always stops
    return decision
