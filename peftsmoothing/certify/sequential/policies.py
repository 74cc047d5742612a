"""Stopping policies of sequential CERTIFY (see ``peftsmoothing.certify.sequential``).

A policy looks at the cumulative count of votes for ``c_A`` at each look of a
``Schedule`` and says whether to stop; the bound it
reports is valid at whichever look sampling stops (a union bound over the looks).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Literal, Protocol

from scipy.stats import norm

from ...core.stats import abstains, certify_bound, clopper_pearson_upper
from ...core.validation import check_alpha, check_int, check_real, check_sigma
from .schedule import Schedule

Reason = Literal["continue", "certified", "futile", "final", "max_radius", "converged"]
"""Why a policy continued or stopped at a look."""


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
        """Whether CERTIFY abstains if it stops here (``stats.abstains``: ``pa_lower < 0.5``)."""
        return abstains(self.pa_lower)


class SequentialPolicy(Protocol):
    """What ``run_sequential`` (and a scheduler) needs from a policy."""

    @property
    def schedule(self) -> Schedule:
        """The looks and their alphas."""
        ...

    def decide(self, look: int, count: int) -> Decision:
        """The decision at ``look`` given the cumulative ``count`` of votes for ``c_A``."""
        ...


class _Policy:
    """What both policies share: a checked sigma and schedule, the bound and the decision at
    a look; each policy says only why it stops (``_reason``)."""

    sigma: float
    schedule: Schedule

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigma", check_sigma(self.sigma))
        if not isinstance(self.schedule, Schedule):
            raise TypeError(f"schedule must be a Schedule, got {type(self.schedule).__name__}")

    def _bound(self, look: int, count: int) -> tuple[float, float]:
        """``(pa_lower, radius)`` at a look (``certify_bound`` at the look's alpha)."""
        schedule = self.schedule
        return certify_bound(self.sigma, count, schedule.looks[look], schedule.alphas[look])

    def _reason(self, look: int, count: int, pa_lower: float, radius: float) -> Reason:
        raise NotImplementedError

    def decide(self, look: int, count: int) -> Decision:
        """The decision after ``look`` (0-based) with ``count`` of its ``looks[look]`` votes.

        Args:
            look: Index into ``schedule.looks``.
            count: Cumulative votes for ``c_A`` among the first ``looks[look]`` estimation
                samples.

        Returns:
            The ``Decision``; its ``pa_lower`` and ``radius`` are valid whether or not
            the caller stops here.

        Raises:
            ValueError: For a look index out of range or a count outside ``[0, n_k]``.

        Examples:
            >>> p = TargetRadiusPolicy(1.0, 1.0, Schedule.create(1000, 0.01, first=500))
            >>> p.decide(1, 800).reason, p.decide(1, 900).reason
            ('final', 'certified')
            >>> d = MaxRadiusPolicy(1.0, Schedule.create(1000, 0.01, first=500)).decide(1, 900)
            >>> d.stop, d.reason, round(d.radius, 3)
            (True, 'final', 1.141)
        """
        k, c = self.schedule.check_look(look, count)
        pa_lower, radius = self._bound(k, c)
        reason = self._reason(k, c, pa_lower, radius)
        n_k, alpha_k = self.schedule.looks[k], self.schedule.alphas[k]
        return Decision(reason != "continue", reason, k, n_k, c, pa_lower, radius, alpha_k)


@dataclass(frozen=True)
class TargetRadiusPolicy(_Policy):
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
        super().__post_init__()
        object.__setattr__(self, "radius", check_real(self.radius, "radius", low=0.0))
        b = self.schedule.alpha if self.beta is None else check_alpha(self.beta)
        object.__setattr__(self, "beta", b)
        final = partial(self._certifies, self.schedule.n_looks - 1)
        object.__setattr__(self, "_final_min", _first_true(final, self.schedule.n_max))

    @property
    def p_target(self) -> float:
        """``Phi(r / sigma)``: the ``pA`` that certifies exactly radius ``r``."""
        return float(norm.cdf(self.radius / self.sigma))

    @property
    def betas(self) -> tuple[float, ...]:
        """Futility level of each look (0.0 at the final look, which never tests futility)."""
        k = self.schedule.n_looks
        b = float(self.beta) / max(k - 1, 1)  # type: ignore[arg-type]
        return (b,) * (k - 1) + (0.0,)

    @property
    def reachable(self) -> bool:
        """Whether ``n_max`` samples can certify ``r`` at all (else every look is futile)."""
        return self._final_min <= self.schedule.n_max

    def _certifies(self, look: int, count: int) -> bool:
        pa_lower, radius = self._bound(look, count)
        return not abstains(pa_lower) and radius >= self.radius

    def _viable(self, look: int, count: int) -> bool:
        """Whether the futility test at a (non-final) look lets sampling go on."""
        n_k = self.schedule.looks[look]
        if count + (self.schedule.n_max - n_k) < self._final_min:
            return False  # even all remaining samples voting for c_A would not certify
        return clopper_pearson_upper(count, n_k, self.betas[look]) >= self.p_target

    def _reason(self, look: int, count: int, pa_lower: float, radius: float) -> Reason:
        if not abstains(pa_lower) and radius >= self.radius:
            return "certified"
        if look == self.schedule.n_looks - 1:
            return "final"
        return "continue" if self._viable(look, count) else "futile"

    def thresholds(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Integer form of ``decide``, for a vectorised (e.g. on-GPU) scheduler.

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
        looks = self.schedule.looks
        certify_at = tuple(_first_true(partial(self._certifies, k), n) for k, n in enumerate(looks))
        futile_at = (  # the final look never gives up
            min(_first_true(partial(self._viable, k), n), certify_at[k]) - 1
            for k, n in enumerate(looks[:-1])
        )
        return certify_at, (*futile_at, -1)


def _first_true(predicate: Callable[[int], bool], n: int) -> int:
    """Smallest ``c`` in ``[0, n]`` with ``predicate(c)`` (monotone in ``c``); ``n + 1`` if none."""
    return bisect.bisect_left(range(n + 1), True, key=predicate)  # False < True


@dataclass(frozen=True)
class MaxRadiusPolicy(_Policy):
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
        super().__post_init__()
        cap, tol = self.max_radius, self.tolerance
        cap = None if cap is None else check_real(cap, "max_radius", low=0.0, low_open=True)
        tol = 0.05 * self.sigma if tol is None else check_real(tol, "tolerance", low=0.0)
        object.__setattr__(self, "max_radius", cap)
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
        return certify_bound(self.sigma, projected, n_max, self.schedule.alphas[-1])[1]

    def _reason(self, look: int, count: int, pa_lower: float, radius: float) -> Reason:
        if look == self.schedule.n_looks - 1:
            return "final"
        if self.max_radius is not None and radius >= self.max_radius:
            return "max_radius"
        if self.projected_radius(look, count) - radius < float(self.tolerance):  # type: ignore[arg-type]
            return "converged"
        return "continue"


def run_sequential(policy: SequentialPolicy, draw: Callable[[int], int]) -> Decision:
    """Drive a policy: draw the samples up to each look, accumulate the count, ask, repeat.

    Args:
        policy: A ``TargetRadiusPolicy``, ``MaxRadiusPolicy`` or compatible object.
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
    for look, n_k in enumerate(policy.schedule.looks):
        m = n_k - drawn
        count += check_int(draw(m), "draw(m)", minimum=0, maximum=m)
        drawn = n_k
        decision = policy.decide(look, count)
        if decision.stop:
            break
    return decision  # the final look always stops (and a schedule has at least one look)
