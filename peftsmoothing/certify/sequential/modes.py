"""Which stopping policy ``certify``'s mode arguments ask for, and how a log records it."""

from __future__ import annotations

from typing import Any

from .policies import MaxRadiusPolicy, SequentialPolicy, TargetRadiusPolicy
from .schedule import Schedule


def fixed_policy(sigma: float, n: int, alpha: float) -> SequentialPolicy:
    """Fixed-``n`` CERTIFY (Cohen et al., 2019) as a policy: one look at ``n``, all of ``alpha``.

    The certification engine runs it like any sequential policy; its one decision is
    ``certify_bound(sigma, count, n, alpha)``, exactly CERTIFY's.

    Examples:
        >>> p = fixed_policy(0.5, 100, 0.001)
        >>> p.schedule.looks, p.schedule.alphas
        ((100,), (0.001,))
        >>> d = p.decide(0, 100)
        >>> d.stop, round(d.pa_lower, 6)
        (True, 0.933254)
    """
    return MaxRadiusPolicy(sigma, Schedule.create(n, alpha, first=n))


def sequential_policy(
    sigma: float,
    n: int,
    alpha: float,
    *,
    radius: float | None = None,
    early_stop: bool = False,
    max_radius: float | None = None,
    tolerance: float | None = None,
    schedule: Schedule | None = None,
) -> TargetRadiusPolicy | MaxRadiusPolicy | None:
    """The stopping policy that ``certify``'s mode arguments ask for (``None``: fixed ``n``).

    ``radius`` selects target mode (``peftsmoothing.certify.sequential.TargetRadiusPolicy``);
    ``early_stop=True``, ``max_radius`` or ``tolerance`` select early stopping
    (``peftsmoothing.certify.sequential.MaxRadiusPolicy``). The look schedule is
    ``Schedule.create(n, alpha)`` unless ``schedule`` is given (then its ``n_max`` and
    ``alpha`` must be ``n`` and ``alpha``).

    Raises:
        ValueError: For both modes at once, a ``schedule`` without a mode, or a schedule
            that disagrees with ``n`` or ``alpha``.

    Examples:
        >>> sequential_policy(0.5, 1000, 0.001) is None
        True
        >>> p = sequential_policy(0.5, 1000, 0.001, radius=0.5)
        >>> type(p).__name__, p.schedule.looks
        ('TargetRadiusPolicy', (256, 512, 1000))
    """
    stop = bool(early_stop) or max_radius is not None or tolerance is not None
    if radius is not None and stop:
        raise ValueError(
            "radius= (target mode) and early_stop/max_radius/tolerance (early stopping) "
            "are two different modes; choose one"
        )
    if radius is None and not stop:
        if schedule is not None:
            raise ValueError("schedule= needs a sequential mode (radius= or early_stop=True)")
        return None
    schedule = Schedule.create(n, alpha) if schedule is None else schedule
    if radius is not None:  # the policy checks that ``schedule`` is a Schedule
        policy: TargetRadiusPolicy | MaxRadiusPolicy = TargetRadiusPolicy(sigma, radius, schedule)
    else:
        policy = MaxRadiusPolicy(sigma, schedule, max_radius=max_radius, tolerance=tolerance)
    if schedule.n_max != n or schedule.alpha != alpha:
        raise ValueError(
            f"the schedule ends at n_max={schedule.n_max} with alpha={schedule.alpha}, but "
            f"n={n} and alpha={alpha} were asked for"
        )
    return policy


def policy_settings(policy: TargetRadiusPolicy | MaxRadiusPolicy) -> tuple[str, dict[str, Any]]:
    """``(mode, parameters)`` of a policy, as a log's settings record them.

    Examples:
        >>> mode, params = policy_settings(sequential_policy(0.5, 1000, 0.001, radius=0.5))
        >>> mode, params["radius"], params["looks"]
        ('target', 0.5, [256, 512, 1000])
    """
    schedule = policy.schedule
    params: dict[str, Any] = {
        "n_max": schedule.n_max,
        "looks": list(schedule.looks),
        "look_alphas": list(schedule.alphas),
    }
    if isinstance(policy, TargetRadiusPolicy):
        params.update(radius=policy.radius, beta=policy.beta)
        return "target", params
    params.update(max_radius=policy.max_radius, tolerance=policy.tolerance)
    return "max_radius", params
