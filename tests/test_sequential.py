"""Sequential CERTIFY: derivable numbers, and statistical soundness on a closed-form classifier.

The soundness tests use a linear binary classifier ``f(x) = 1[w.x + b > 0]``: smoothed with
``N(0, sigma^2 I)`` noise it votes for class 1 with probability ``pA = Phi(d / sigma)``, ``d``
the signed distance of ``x`` to the hyperplane, so its true certified radius is ``d``.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from numpy.typing import NDArray
from scipy.stats import beta as beta_dist
from scipy.stats import binomtest, norm

from peftsmoothing.certify.sequential import (
    DEFAULT_FINAL_SHARE,
    Decision,
    MaxRadiusPolicy,
    Schedule,
    SequentialPolicy,
    TargetRadiusPolicy,
    looks,
    max_certifiable_radius,
    run_sequential,
    spend_alpha,
)
from peftsmoothing.core.stats import certified_radius, clopper_pearson_lower, clopper_pearson_upper

# ----------------------------------------------------------------------------- schedule


@pytest.mark.parametrize("n_max", [1, 2, 100, 255, 256, 257, 1000, 10_000, 100_000, 123_457])
@pytest.mark.parametrize("first", [1, 100, 256])
@pytest.mark.parametrize("growth", [1.1, 2.0, 3.0])
def test_looks_increase_strictly_and_end_at_n_max(n_max: int, first: int, growth: float) -> None:
    out = looks(n_max, first=first, growth=growth)
    assert out[-1] == n_max
    assert all(b > a for a, b in itertools.pairwise(out))
    assert out[0] == min(first, n_max) or out == (n_max,)
    if len(out) > 1:  # the last step is never tiny (merged into the final look)
        assert n_max / out[-2] >= math.sqrt(growth)


def test_default_looks_double_from_256() -> None:
    assert looks(100_000) == (256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 100_000)
    assert looks(10_000) == (256, 512, 1024, 2048, 4096, 10_000)  # 8192 -> 10k merged
    assert looks(100, first=256) == (100,)  # fixed-n CERTIFY


@pytest.mark.parametrize(
    "kwargs", [{"n_max": 0}, {"n_max": 10, "first": 0}, {"n_max": 10, "growth": 1.0}]
)
def test_looks_rejects_bad_arguments(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        looks(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("alpha", [0.001, 0.05, 0.1, 0.3, 1e-9, 0.7])
@pytest.mark.parametrize("n_looks", [1, 2, 3, 7, 10, 13, 31])
@pytest.mark.parametrize("share", [0.1, 0.5, 1 / 3])
def test_spent_alpha_never_exceeds_alpha(alpha: float, n_looks: int, share: float) -> None:
    alphas = spend_alpha(alpha, n_looks, share)
    assert len(alphas) == n_looks and all(a > 0 for a in alphas)
    assert math.fsum(alphas) <= alpha and sum(alphas) <= alpha
    assert math.fsum(alphas) == pytest.approx(alpha, rel=1e-12)  # nothing wasted either
    if n_looks > 1:
        assert alphas[-1] == pytest.approx(alpha * share, rel=1e-12)
        assert alphas[0] == pytest.approx(alpha * (1 - share) / (n_looks - 1), rel=1e-12)
    Schedule(tuple(range(1, n_looks + 1)), alphas, alpha)  # accepted as a union bound


def test_spend_alpha_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="final_share"):
        spend_alpha(0.01, 3, 1.0)
    with pytest.raises(ValueError):
        spend_alpha(0.01, 0)
    with pytest.raises(ValueError):
        spend_alpha(1.0, 3)
    assert spend_alpha(0.01, 1, 1.0) == (0.01,)


def test_schedule_rejects_a_broken_union_bound_and_bad_looks() -> None:
    with pytest.raises(ValueError, match="union bound"):
        Schedule((100, 200), (0.001, 0.001), 0.001)  # "full alpha at every look"
    with pytest.raises(ValueError, match="increasing"):
        Schedule((200, 200), (0.0005, 0.0005), 0.001)
    with pytest.raises(ValueError, match="equal length"):
        Schedule((100, 200), (0.001,), 0.001)
    s = Schedule.create(100_000, 0.001)
    assert s.n_max == 100_000 and s.n_looks == 10 and s.alphas[-1] == 0.0005
    with pytest.raises(ValueError, match="look"):
        s.check_look(10, 0)
    with pytest.raises(ValueError, match="count"):
        s.check_look(0, 257)


@pytest.mark.parametrize("policy_kind", ["target", "max"])
def test_all_successes_final_bound_is_alpha_k_to_the_one_over_n_max(policy_kind: str) -> None:
    s = Schedule.create(100_000, 0.001)
    policy: SequentialPolicy = (
        TargetRadiusPolicy(1.0, 10.0, s) if policy_kind == "target" else MaxRadiusPolicy(1.0, s)
    )
    last = s.n_looks - 1
    d = policy.decide(last, s.n_max)
    assert d.stop and d.alpha_spent == s.alphas[-1] == 0.0005
    assert d.pa_lower == pytest.approx(0.0005 ** (1 / 100_000), rel=1e-12)
    assert d.radius == pytest.approx(max_certifiable_radius(1.0, 100_000, 0.0005), rel=1e-12)
    for k, n_k in enumerate(s.looks):  # every look: the bound at its own alpha_k
        d = policy.decide(k, n_k)
        assert d.alpha_spent == s.alphas[k] and d.n == n_k
        assert d.pa_lower == pytest.approx(s.alphas[k] ** (1 / n_k), rel=1e-12)


def test_radius_loss_of_the_spending_rule_at_100k() -> None:
    """Item 2: what half of alpha = 0.001 at the final look costs at n_max = 100,000."""
    s = Schedule.create(100_000, 0.001)
    fixed = max_certifiable_radius(1.0, 100_000, 0.001)
    final = max_certifiable_radius(1.0, 100_000, s.alphas[-1])
    even = max_certifiable_radius(1.0, 100_000, 0.001 / s.n_looks)  # plain Bonferroni split
    print(f"\nmax radius / sigma at n=100k: fixed {fixed:.4f}, sequential {final:.4f} "
          f"(-{fixed - final:.4f}), even split {even:.4f} (-{fixed - even:.4f})")  # fmt: skip
    assert round(fixed, 4) == 3.8115 and round(final, 4) == 3.7878
    assert 0.02 < fixed - final < 0.025 < fixed - even
    for p in (0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999):
        k = round(p * 100_000)
        r_fixed = certified_radius(1.0, clopper_pearson_lower(k, 100_000, 0.001))
        r_seq = certified_radius(1.0, clopper_pearson_lower(k, 100_000, s.alphas[-1]))
        print(f"pA {p}: fixed {r_fixed:.4f}  sequential {r_seq:.4f}  loss {r_fixed - r_seq:.4f}")
        assert 0 < r_fixed - r_seq < (0.003 if p <= 0.99 else 0.006)


def test_clopper_pearson_upper_mirrors_the_lower_bound() -> None:
    assert clopper_pearson_upper(100, 100, 0.01) == 1.0
    assert clopper_pearson_upper(0, 100, 0.01) == pytest.approx(1 - 0.01 ** (1 / 100))
    for k in (1, 37, 99):
        assert clopper_pearson_upper(k, 100, 0.05) == pytest.approx(
            float(beta_dist.ppf(0.95, k + 1, 100 - k)), rel=1e-10
        )
        assert clopper_pearson_lower(k, 100, 0.05) < k / 100 < clopper_pearson_upper(k, 100, 0.05)
    with pytest.raises(ValueError):
        clopper_pearson_upper(101, 100, 0.05)


# ------------------------------------------------------------------------- target radius


def test_target_decision_is_certify_radius_at_least_r() -> None:
    sigma, r = 0.25, 0.5
    s = Schedule.create(100_000, 0.001)
    policy = TargetRadiusPolicy(sigma, r, s)
    assert policy.p_target == pytest.approx(norm.cdf(2.0))
    certify_at, futile_at = policy.thresholds()
    for k, n_k in enumerate(s.looks):
        for count in {certify_at[k] - 1, certify_at[k], futile_at[k], futile_at[k] + 1}:
            if not 0 <= count <= n_k:
                continue
            d = policy.decide(k, count)
            pa_lower = clopper_pearson_lower(count, n_k, s.alphas[k])
            assert d.pa_lower == pa_lower
            certified = pa_lower >= 0.5 and certified_radius(sigma, pa_lower) >= r
            assert (d.reason == "certified") == certified == (count >= certify_at[k])
            assert (d.reason == "certified") == (d.radius >= r)
            assert (d.reason == "futile") == (count <= futile_at[k])
            if d.reason == "futile":  # a futility stop never certifies
                assert d.stop and d.radius < r
    assert futile_at[-1] == -1  # the final look decides by the lower bound only
    assert policy.decide(s.n_looks - 1, certify_at[-1] - 1).reason == "final"


def test_unreachable_target_is_futile_at_the_first_look() -> None:
    s = Schedule.create(10_000, 0.001)
    policy = TargetRadiusPolicy(1.0, 3.5, s)  # > max_certifiable_radius(1, 10_000, 0.0005)
    assert not policy.reachable
    d = policy.decide(0, 256)
    assert d.stop and d.reason == "futile" and d.radius < 3.5
    assert TargetRadiusPolicy(1.0, 3.1, s).reachable


def test_radius_zero_certifies_exactly_when_certify_does_not_abstain() -> None:
    s = Schedule.create(1000, 0.01, first=1000)  # one look: plain CERTIFY at alpha
    policy = TargetRadiusPolicy(0.5, 0.0, s)
    for count in range(500, 600):
        d = policy.decide(0, count)
        assert (d.reason == "certified") == (not d.abstain)
        assert d.abstain == (clopper_pearson_lower(count, 1000, 0.01) < 0.5)


def test_futility_budget_and_validation() -> None:
    s = Schedule.create(10_000, 0.001)
    assert TargetRadiusPolicy(0.5, 0.5, s).beta == 0.001
    betas = TargetRadiusPolicy(0.5, 0.5, s, beta=0.01).betas
    assert betas[-1] == 0.0 and math.fsum(betas) == pytest.approx(0.01)
    with pytest.raises(ValueError):
        TargetRadiusPolicy(0.0, 0.5, s)
    with pytest.raises(ValueError):
        TargetRadiusPolicy(0.5, -0.1, s)
    with pytest.raises(TypeError):
        TargetRadiusPolicy(0.5, 0.5, (256, 10_000))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- max radius


def test_max_radius_policy_reasons() -> None:
    s = Schedule.create(100_000, 0.001)
    policy = MaxRadiusPolicy(0.25, s, max_radius=0.5)
    assert policy.tolerance == pytest.approx(0.0125)
    d = policy.decide(0, 256)  # all votes at 256: 0.25 * Phi^-1(alpha_0 ** (1/256)) = 0.445
    assert d.reason == "continue" and d.radius == pytest.approx(
        0.25 * norm.ppf(s.alphas[0] ** (1 / 256)), rel=1e-9
    )
    assert policy.decide(1, 512).reason == "max_radius"
    assert policy.decide(2, 300).reason == "converged"  # p_hat < 0.5: abstains at any n
    assert policy.decide(2, 300).abstain
    assert policy.decide(9, 60_000).reason == "final"
    uncapped = MaxRadiusPolicy(0.25, s, tolerance=0.0)
    assert all(not uncapped.decide(k, n).stop for k, n in enumerate(s.looks[:-1]))
    # projection: the final look's bound at the current vote share
    assert policy.projected_radius(3, 2048) == pytest.approx(
        max_certifiable_radius(0.25, 100_000, 0.0005)
    )
    with pytest.raises(ValueError):
        MaxRadiusPolicy(0.25, s, max_radius=0.0)


def test_run_sequential_draws_fresh_increments_up_to_each_look() -> None:
    s = Schedule.create(10_000, 0.01)
    asked: list[int] = []

    def draw(m: int) -> int:
        asked.append(m)
        return m // 2  # p_hat = 0.5 at every look

    d = run_sequential(TargetRadiusPolicy(1.0, 0.2, s, beta=1e-9), draw)
    assert np.cumsum(asked).tolist() == list(s.looks[: len(asked)])
    assert isinstance(d, Decision) and d.stop and d.n == sum(asked)
    with pytest.raises(ValueError, match="draw"):
        run_sequential(TargetRadiusPolicy(1.0, 0.2, s), lambda m: m + 1)


# ------------------------------------------------------------------ statistical soundness

ALPHA = 0.05  # large, so that a broken rule shows with a few hundred points
SIGMA, RADIUS, N_MAX = 0.5, 0.5, 100_000
N_INSIDE = N_OUTSIDE = 400


def _naive_target(counts: NDArray[np.int64], schedule: Schedule) -> NDArray[np.bool_]:
    """The deliberately broken rule: the full alpha at every look (no union bound)."""
    n = np.asarray(schedule.looks)[None, :]
    lower = np.where(counts > 0, beta_dist.ppf(ALPHA, np.maximum(counts, 1), n - counts + 1), 0)
    with np.errstate(divide="ignore"):
        radius = SIGMA * norm.ppf(lower)
    return np.asarray(np.asarray((lower >= 0.5) & (radius >= RADIUS)).any(axis=1))


def _run(policy: SequentialPolicy, counts: NDArray[np.int64]) -> list[Decision]:
    out = []
    for row in counts:
        for look, count in enumerate(row):
            d = policy.decide(look, int(count))
            if d.stop:
                break
        out.append(d)
    return out


def _exceeds_slack(failures: int, trials: int) -> bool:
    """One-sided exact binomial test of ``rate <= ALPHA`` rejects at level 0.001."""
    return binomtest(failures, trials, ALPHA, alternative="greater").pvalue < 0.001


def test_over_certification_rate_is_within_alpha_and_naive_rule_exceeds_it() -> None:
    rng = np.random.default_rng(20240601)
    schedule = Schedule.create(N_MAX, ALPHA)
    # Half just inside the target radius (true pA slightly below Phi(r / sigma)), half outside.
    d = np.concatenate(
        [
            RADIUS - SIGMA * rng.uniform(0.0, 0.002, N_INSIDE),
            RADIUS + SIGMA * rng.uniform(0.0, 1.0, N_OUTSIDE),
        ]
    )
    p_a = norm.cdf(d / SIGMA)
    # The linear model's votes for class 1 among n i.i.d. noisy copies are Binomial(n, pA), and
    # fresh samples per look are independent: drawing Binomial(n_k - n_{k-1}, pA) increments
    # and summing them gives the same joint law of the counts at all looks as counting votes
    # (checked with real Gaussian noise in test_binomial_counts_match_a_real_linear_model).
    increments = np.diff(np.asarray(schedule.looks), prepend=0)
    counts = np.cumsum(rng.binomial(increments[None, :], p_a[:, None]), axis=1)
    inside = d < RADIUS

    target = _run(TargetRadiusPolicy(SIGMA, RADIUS, schedule), counts)
    capped = _run(MaxRadiusPolicy(SIGMA, schedule, max_radius=RADIUS), counts[inside])
    free = _run(MaxRadiusPolicy(SIGMA, schedule), counts)
    naive = _naive_target(counts, schedule)

    idx = np.flatnonzero(inside)
    over = {
        "target": sum(target[i].radius >= RADIUS for i in idx),
        "max_radius(cap=r)": sum(c.radius >= RADIUS for c in capped),
        "naive": int(naive[idx].sum()),
    }
    # The general failure event of a max-radius certificate: radius > true radius d.
    wrong = sum(f.radius > di for f, di in zip(free, d, strict=True))
    print(f"\nover-certified at r among {N_INSIDE} points with d < r: {over}; "
          f"max_radius(no cap) radius > d: {wrong}/{len(d)}")  # fmt: skip
    for name in ("target", "max_radius(cap=r)"):
        assert not _exceeds_slack(over[name], N_INSIDE), name
    assert not _exceeds_slack(wrong, len(d))
    assert _exceeds_slack(over["naive"], N_INSIDE)  # the test has the power to catch a bad rule

    # The sound rules still work: they certify most outside points, with fewer samples.
    certified_outside = [
        t.reason == "certified" for t, i in zip(target, inside, strict=True) if not i
    ]
    assert np.mean(certified_outside) > 0.8
    assert np.mean([t.n for t in target]) < N_MAX


def test_binomial_counts_match_a_real_linear_model() -> None:
    """Real Gaussian noise through f(x) = 1[w.x + b > 0]: votes ~ Binomial(n, Phi(d / sigma))."""
    rng = np.random.default_rng(7)
    dim, sigma = 16, 0.5
    w = rng.normal(size=dim)
    b = 0.3
    schedule = Schedule.create(20_000, 0.001, first=500)
    for target_d in (0.05, 0.3, 0.6, 1.2):
        x = rng.normal(size=dim)
        x += (target_d - (w @ x + b) / np.linalg.norm(w)) * w / np.linalg.norm(w)
        d = (w @ x + b) / np.linalg.norm(w)

        def votes(m: int, x: NDArray[np.float64] = x) -> NDArray[np.bool_]:
            noisy = x[None, :] + sigma * rng.normal(size=(m, dim))
            return np.asarray(noisy @ w + b > 0)

        # Selection (n0 = 100) on its own samples; then only fresh estimation samples.
        assert votes(100).mean() > 0.5  # c_A = class 1

        def draw(m: int, x: NDArray[np.float64] = x) -> int:
            return int(votes(m, x).sum())  # votes for c_A = 1

        decision = run_sequential(MaxRadiusPolicy(sigma, schedule), draw)
        p_a = float(norm.cdf(d / sigma))
        assert binomtest(decision.count, decision.n, p_a).pvalue > 0.001
        assert decision.radius <= d  # sound (holds w.p. >= 1 - 0.001; seeded)
        target = run_sequential(TargetRadiusPolicy(sigma, 0.25, schedule), draw)
        if d > 0.6:  # a wide margin: certified early
            assert target.reason == "certified" and target.n < schedule.n_max
        if d < 0.25:
            assert target.radius < 0.25
    big = votes(200_000, x=x)
    assert binomtest(int(big.sum()), big.size, float(norm.cdf(d / sigma))).pvalue > 0.001


def test_default_final_share_is_half() -> None:
    assert DEFAULT_FINAL_SHARE == 0.5
