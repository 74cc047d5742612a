"""Sequential, anytime-valid CERTIFY: look schedules, alpha spending and stopping policies.

Pure decision logic (numpy/scipy only, no torch). CERTIFY of Cohen, Rosenfeld & Kolter (2019)
draws ``n0`` selection samples to pick the class ``c_A`` and then ``n`` *independent*
estimation samples whose count ``k`` of ``c_A`` gives the one-sided Clopper-Pearson bound
``pa_lower`` at level ``alpha``. Here the estimation samples are drawn in stages that end at
the cumulative sample counts ("looks") of a ``Schedule``; after each look a policy says
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

(``run_sequential`` is that loop.) Soundness rests on one union bound (Bonferroni; the
multi-stage test of Horváth et al., ICLR 2022): look ``k`` uses the Clopper-Pearson bound at
level ``alpha_k`` with ``sum_k alpha_k <= alpha``, so with probability at least ``1 - alpha``
the bounds of *all* looks hold at once, whatever rule (even a data-dependent one, or the
caller running out of time) decides where sampling stops. Anytime-valid confidence sequences
(Voráček, NeurIPS 2024) are the continuous-monitoring version of the same idea. See
``docs/sequential.md`` for the derivation and the defaults.
"""

from __future__ import annotations

from .modes import fixed_policy, policy_settings, sequential_policy
from .policies import (
    Decision,
    MaxRadiusPolicy,
    Reason,
    SequentialPolicy,
    TargetRadiusPolicy,
    run_sequential,
)
from .schedule import (
    DEFAULT_FINAL_SHARE,
    DEFAULT_FIRST_LOOK,
    DEFAULT_GROWTH,
    Schedule,
    looks,
    max_certifiable_radius,
    spend_alpha,
)

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
    "fixed_policy",
    "looks",
    "max_certifiable_radius",
    "policy_settings",
    "run_sequential",
    "sequential_policy",
    "spend_alpha",
]
