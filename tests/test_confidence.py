"""The lower bound on certified accuracy (``report/confidence.py``): derived values, and its
coverage in simulations where every image's true probability, hence its true radius, is known.

Simulation: every image has top-class probability ``p`` under noise, so the smoothed
classifier's true certified radius is ``sigma * Phi^-1(p)`` everywhere (a binary linear base
classifier, as in ``test_sequential_certify.py``). CERTIFY draws ``Binomial(n, p)`` votes and
certifies ``sigma * Phi^-1(CP_lower)``; a certificate is wrong when it claims more than the
true radius. With one true radius the bound is as tight as it can be (just above that radius
the approximation counts exactly the wrong certificates), so the test has the power to see a
bound that is too high, as one computed with too small an alpha is.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import beta, binomtest, norm
from torch import nn

import peftsmoothing as ps
from peftsmoothing.certify.sequential import MaxRadiusPolicy, Schedule
from peftsmoothing.cli import main
from peftsmoothing.report.certlog import LogRow
from peftsmoothing.report.confidence import run_alpha, wrong_certificates_at_most

SIGMA = 0.5


def test_wrong_certificates_at_most_is_the_binomial_quantile() -> None:
    # zero wrong whenever (1 - alpha)^m >= confidence
    assert wrong_certificates_at_most(51, 0.001, 0.95) == 0  # 0.999^51 = 0.9503
    assert wrong_certificates_at_most(52, 0.001, 0.95) == 1  # 0.999^52 = 0.9493
    assert wrong_certificates_at_most(0, 0.001) == 0
    with pytest.raises(ValueError):
        wrong_certificates_at_most(10, 0.001, confidence=1.0)


def _failures(claimed: np.ndarray, true: float, q: int) -> int:
    """Trials where the bound fails. Every image has the same true radius ``true``, so at a
    radius just above it the truth is 0 and the approximation counts exactly the wrong
    certificates: the bound fails somewhere iff more than ``q`` certificates are wrong."""
    return int(np.sum((claimed > true).sum(axis=1) > q))


def _not_above(failures: int, trials: int, rate: float) -> bool:
    return binomtest(failures, trials, rate, alternative="greater").pvalue > 0.01


P_TRUE = 0.8  # every image: top-class probability 0.8, true radius SIGMA * Phi^-1(0.8)


def test_the_bound_covers_the_true_certified_accuracy_fixed_n() -> None:
    rng = np.random.default_rng(0)
    trials, m, n, alpha, confidence = 4000, 100, 10_000, 0.05, 0.9
    k = rng.binomial(n, P_TRUE, size=(trials, m))
    lower = beta.ppf(alpha, k, n - k + 1)  # CERTIFY's Clopper-Pearson bound
    claimed = np.where(lower >= 0.5, SIGMA * norm.ppf(np.clip(lower, 0.5, None)), -1.0)
    true = SIGMA * float(norm.ppf(P_TRUE))
    fails = _failures(claimed, true, wrong_certificates_at_most(m, alpha, confidence))
    assert _not_above(fails, trials, 1 - confidence), (fails, trials)
    # power: a bound that assumed a 4x smaller alpha fails far more often than 1 - confidence
    too_high = _failures(claimed, true, wrong_certificates_at_most(m, alpha / 4, confidence))
    assert too_high > 5 * trials * (1 - confidence), too_high


def test_the_bound_covers_the_true_certified_accuracy_sequential() -> None:
    """The run's alpha (not a row's alpha_k) bounds a sequential certificate as a whole."""
    rng = np.random.default_rng(1)
    trials, m, alpha, confidence = 3000, 60, 0.2, 0.9
    policy = MaxRadiusPolicy(SIGMA, Schedule.create(2048, alpha, first=64))
    looks = policy.schedule.looks
    # every decision the policy can take, tabulated once: look k, count c -> decision
    table = [[policy.decide(k, c) for c in range(n_k + 1)] for k, n_k in enumerate(looks)]
    claimed = np.full((trials, m), np.nan)
    count = np.zeros((trials, m), dtype=np.int64)
    for k, n_k in enumerate(looks):
        count += rng.binomial(n_k - (looks[k - 1] if k else 0), P_TRUE, size=(trials, m))
        for t, i in zip(*np.nonzero(np.isnan(claimed)), strict=True):
            d = table[k][count[t, i]]
            if d.stop:
                claimed[t, i] = -1.0 if d.abstain else d.radius
    assert not np.isnan(claimed).any()  # the final look always stops
    true = SIGMA * float(norm.ppf(P_TRUE))
    assert (claimed > true).any()  # wrong certificates happen
    fails = _failures(claimed, true, wrong_certificates_at_most(m, alpha, confidence))
    assert _not_above(fails, trials, 1 - confidence), (fails, trials)


def _rows(count: int, alpha: float | None) -> list[LogRow]:
    pa = 0.001 ** (1 / 100)  # all 100 votes: the Clopper-Pearson bound at alpha 0.001
    radius = SIGMA * float(norm.ppf(pa))
    if alpha is None:  # release 0.1's rows: no alpha column
        return [LogRow(i, 0, 0, radius, 1, pa, 100, 100, 1.0) for i in range(count)]
    return [LogRow(i, 0, 0, radius, 1, pa, 100, 100, 1.0, alpha, "0" * 64)
            for i in range(count)]  # fmt: skip


def test_the_runs_alpha_comes_from_the_settings_never_from_a_looks_alpha() -> None:
    report = ps.CertificationReport(_rows(200, 0.0005))  # alpha_k of a sequential look
    with pytest.raises(ValueError, match="pass alpha="):
        run_alpha(report)  # format-2 rows without their settings file
    report.settings = {"alpha": 0.001, "mode": "max_radius"}
    assert run_alpha(report) == 0.001
    old = ps.CertificationReport(_rows(200, None))
    with pytest.raises(ValueError, match="pass alpha="):
        run_alpha(old)  # format 1 without alpha values: unknown
    bound = report.certified_accuracy_bound([0.0, 0.7, 0.8])  # every radius is 0.75
    q = wrong_certificates_at_most(200, 0.001, 0.95)
    assert bound == {0.0: (200 - q) / 200, 0.7: (200 - q) / 200, 0.8: 0.0}
    assert math.isclose(report.certified_accuracy_bound([0.0], confidence=0.5, alpha=0.5)[0.0],
                        (200 - wrong_certificates_at_most(200, 0.5, 0.5)) / 200)  # fmt: skip


def test_report_prints_the_bound_and_plots_pa_lower(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command prints both tables; a Cohen-layout log, which records no alpha, says so."""
    smoothed = ps.SmoothedClassifier(_Constant(), 2, sigma=SIGMA)
    data = [(torch.rand(1, 2, 2), 1) for _ in range(30)]
    log = tmp_path / "run.tsv"
    smoothed.certify_dataset(data, n0=10, n=100, alpha=0.001, batch_size=100, log=log)
    cohen = tmp_path / "cohen.tsv"
    smoothed.certify_dataset(data, n0=10, n=100, alpha=0.001, batch_size=100, log=cohen,
                             log_format="cohen")  # fmt: skip
    (tmp_path / "cohen.tsv.json").unlink()  # as Cohen et al.'s own logs come
    assert main(["report", str(log), "--radii", "0", "0.5", "--plot", str(tmp_path / "p.png")]) == 0
    out = capsys.readouterr().out
    q = wrong_certificates_at_most(30, 0.001, 0.95)
    assert "probability >= 0.95" in out and f"| {(30 - q) / 30:.3f} |" in out
    assert (tmp_path / "p.png").stat().st_size > 0
    assert main(["report", str(cohen), "--radii", "0"]) == 0
    assert "n/a (the logs do not record the run's alpha" in capsys.readouterr().out
    assert main(["report", str(cohen), "--radii", "0", "--alpha", "0.001"]) == 0
    assert f"| {(30 - q) / 30:.3f} | 30 |" in capsys.readouterr().out


class _Constant(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tensor([0.0, 1.0]).repeat(len(x), 1)


def test_a_run_without_a_log_knows_its_alpha() -> None:
    """certify_dataset without a log (fixed or sequential): the bound needs no alpha= either."""
    smoothed = ps.SmoothedClassifier(_Constant(), 2, sigma=SIGMA)
    data = [(torch.rand(1, 2, 2), 1) for _ in range(10)]
    q = wrong_certificates_at_most(10, 0.01, 0.95)
    for mode in ({}, {"radius": 0.1}, {"early_stop": True}):
        report = smoothed.certify_dataset(data, n0=10, n=300, alpha=0.01, batch_size=300,
                                          **mode)  # type: ignore[arg-type]  # fmt: skip
        assert report.certified_accuracy_bound([0.0]) == {0.0: (10 - q) / 10}
