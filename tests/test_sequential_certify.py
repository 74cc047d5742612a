"""Sequential CERTIFY through the real ``SmoothedClassifier``: soundness, packing, logs, golden.

The soundness test smooths a linear binary torch model ``f(x) = 1[w.x + b > 0]`` (``|w| = 1``):
under ``N(0, sigma^2 I)`` noise it votes for class 1 with probability ``Phi(d / sigma)``, ``d``
the signed distance of ``x`` to the hyperplane, so the smoothed classifier's true radius is
``d``, in closed form.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import binomtest
from torch import nn

import peftsmoothing as ps
from peftsmoothing.certify.sequential import Schedule, sequential_policy
from peftsmoothing.core.seeds import derive_seed
from peftsmoothing.report.certlog import parse_log, read_settings

SIGMA = RADIUS = 0.5
ALPHA = 0.05
N_MAX = 4096
SHAPE = (1, 2, 2)


def _linear(d: float) -> nn.Module:
    """Logits ``(0, w.x + b)`` with ``|w| = 1`` and ``x0 = 0.5`` at signed distance ``d``."""
    dim = math.prod(SHAPE)
    w = torch.full((dim,), 1.0 / math.sqrt(dim), dtype=torch.float32)
    lin = nn.Linear(dim, 2)
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.zero_()
        lin.weight[1] = w
        lin.bias[1] = d - float(w.sum()) * 0.5
    return nn.Sequential(nn.Flatten(), lin)


def _x0() -> torch.Tensor:
    return torch.full(SHAPE, 0.5)


def _over_certified(schedule: Schedule | None, alpha: float, d: np.ndarray) -> tuple[int, float]:
    """How many of the points are certified at RADIUS, and the mean samples per point."""
    hits, samples = 0, 0
    for i, di in enumerate(d):
        smoothed = ps.SmoothedClassifier(_linear(float(di)), 2, sigma=SIGMA)
        cert = smoothed.certify(
            _x0(), n0=100, n=N_MAX, alpha=alpha, batch_size=N_MAX, seed=i, radius=RADIUS,
            schedule=schedule,
        )  # fmt: skip
        hits += int(not cert.abstained and cert.radius >= RADIUS)
        samples += cert.n
    return hits, samples / len(d)


def _exceeds_slack(failures: int, trials: int) -> bool:
    """One-sided exact binomial test of ``rate <= ALPHA`` rejects at level 0.001."""
    return bool(binomtest(failures, trials, ALPHA, alternative="greater").pvalue < 0.001)


@pytest.fixture
def one_thread() -> object:
    """Tiny matrices: torch's thread pool only adds contention (5x slower on 2 busy cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
def test_target_mode_over_certifies_within_alpha_and_the_naive_rule_does_not() -> None:
    rng = np.random.default_rng(7)
    inside = RADIUS - SIGMA * rng.uniform(0.0, 0.002, 200)  # true radius just below r
    outside = RADIUS + SIGMA * rng.uniform(0.2, 1.0, 200)
    sound = Schedule.create(N_MAX, ALPHA)
    over, mean_n = _over_certified(None, ALPHA, inside)
    k = sound.n_looks
    naive = Schedule(sound.looks, (ALPHA,) * k, alpha=ALPHA * k)  # full alpha at every look
    over_naive, _ = _over_certified(naive, ALPHA * k, inside)
    certified_outside, mean_out = _over_certified(None, ALPHA, outside)
    print(f"\nover-certified at r among {len(inside)} points with d < r: sound {over}, "
          f"naive {over_naive}; outside certified {certified_outside}/{len(outside)}, "
          f"mean n inside {mean_n:.0f}, outside {mean_out:.0f}")  # fmt: skip
    assert not _exceeds_slack(over, len(inside))
    assert _exceeds_slack(over_naive, len(inside))  # the test has the power to catch it
    assert certified_outside > 0.8 * len(outside)
    assert mean_out < N_MAX / 4


def test_fixed_n_certify_is_unchanged_golden() -> None:
    """Stored before the sequential modes existed (same torch CPU kernels)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    x = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(1))
    cert = ps.SmoothedClassifier(model, 5, sigma=0.5).certify(
        x, n0=20, n=500, alpha=0.001, batch_size=128, seed=7
    )
    assert (cert.prediction, cert.count, cert.n) == (1, 307, 500)
    assert cert.pa_lower == 0.5445283146388306
    assert cert.radius == 0.05592435126951763
    assert cert.alpha_spent == 0.001 and cert.reason is None
    legacy = ps.Certificate(1, 0.1, 0.6, 3, 5, 2, 0.0)  # positional construction still works
    assert legacy.alpha_spent is None


def _data(count: int) -> list[tuple[torch.Tensor, int]]:
    gen = torch.Generator().manual_seed(3)
    return [(torch.rand(3, 4, 4, generator=gen), i % 3) for i in range(count)]


def _classifier() -> ps.SmoothedClassifier:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 3))
    with torch.no_grad():
        model[1].weight.mul_(20.0)  # confident enough that some images stop early
    return ps.SmoothedClassifier(model, 3, sigma=0.25)


@pytest.mark.parametrize("mode", [{"radius": 0.1}, {"early_stop": True}])
def test_packing_does_not_change_an_images_noise(mode: dict[str, object]) -> None:
    """certify_dataset (packed, several images per batch) == certify of each image alone."""
    smoothed, data = _classifier(), _data(12)
    report = smoothed.certify_dataset(data, n0=30, n=3000, alpha=0.01, batch_size=700, **mode)
    alone = [
        smoothed.certify(
            x, n0=30, n=3000, alpha=0.01, batch_size=700, seed=derive_seed(0, i),
            **mode,  # type: ignore[arg-type]
        )
        for i, (x, _) in enumerate(data)
    ]
    assert report.n.tolist() == [c.n for c in alone]
    assert [int(v) for v in report.predict] == [c.prediction for c in alone]
    assert len(set(report.n.tolist())) > 1  # the images stopped at different looks
    small = smoothed.certify_dataset(data, n0=30, n=3000, alpha=0.01, batch_size=256, **mode)
    assert small.n.tolist() != [] and len(small) == len(report)


def test_sequential_log_records_mode_schedule_and_per_row_alpha(tmp_path: object) -> None:
    from pathlib import Path

    log = Path(str(tmp_path)) / "seq.tsv"
    smoothed, data = _classifier(), _data(8)
    report = smoothed.certify_dataset(
        data, n0=30, n=3000, alpha=0.01, batch_size=500, log=log, radius=0.1
    )
    settings = read_settings(log)
    assert settings is not None and settings["mode"] == "target"
    seq = settings["sequential"]
    assert seq["radius"] == 0.1 and seq["n_max"] == 3000 and seq["looks"][-1] == 3000
    assert math.fsum(seq["look_alphas"]) <= 0.01
    rows, _ = parse_log(log.read_bytes())
    assert sorted(r.idx for r in rows) == list(range(8))
    assert all(r.alpha in seq["look_alphas"] for r in rows)
    assert "target mode" in report.summary()
    # Resume: nothing left to do, same report; other mode parameters are refused.
    again = smoothed.certify_dataset(
        data, n0=30, n=3000, alpha=0.01, batch_size=500, log=log, radius=0.1
    )
    assert again.radius.tolist() == report.radius.tolist()
    with pytest.raises(ValueError, match="radius"):
        smoothed.certify_dataset(data, n0=30, n=3000, alpha=0.01, log=log, radius=0.2)
    # A shard of the same run certifies its images as the whole run did.
    shard = smoothed.certify_dataset(
        data, n0=30, n=3000, alpha=0.01, batch_size=500, shard=(1, 2), radius=0.1
    )
    assert shard.n.tolist() == report.n.tolist()[1::2]


def test_mode_arguments_are_checked() -> None:
    smoothed = _classifier()
    x = torch.rand(3, 4, 4)
    with pytest.raises(ValueError, match="two different modes"):
        smoothed.certify(x, n0=10, n=500, radius=0.1, early_stop=True)
    with pytest.raises(ValueError, match="schedule"):
        smoothed.certify(x, n0=10, n=500, schedule=Schedule.create(500, 0.001))
    with pytest.raises(ValueError, match="n_max"):
        smoothed.certify(x, n0=10, n=600, radius=0.1, schedule=Schedule.create(500, 0.001))
    cert = smoothed.certify(x, n0=10, n=2000, alpha=0.001, early_stop=True, max_radius=0.01)
    assert cert.reason in {"max_radius", "converged", "final"} and cert.alpha_spent is not None


def test_a_non_finite_logit_fails_in_sequential_mode() -> None:
    class Bad(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = torch.zeros(len(x), 2)
            out[-1, 0] = float("nan")
            return out

    with pytest.raises(FloatingPointError):
        ps.SmoothedClassifier(Bad(), 2, 0.5).certify(torch.rand(1, 2, 2), n=500, radius=0.1)


class _MeanAbove(nn.Module):
    """f(x) = 1[mean(x) > 0.5], for images of any shape (its votes depend on the shape)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        above = (x.flatten(1).mean(dim=1) > 0.5).float()
        return torch.stack([1.0 - above, above], dim=1)


_MIXED_SHAPES = [(3, 4, 4), (1, 4, 4), (3, 4, 4), (1, 8, 8), (2, 3, 5), (1, 4, 4)]


@pytest.mark.parametrize("mode", [{"radius": 0.2}, {"early_stop": True}])
def test_packed_equals_alone_for_images_of_different_shapes(mode: dict[str, object]) -> None:
    """Images of other shapes never share a batch: each is smoothed at its own shape."""
    smoothed = ps.SmoothedClassifier(_MeanAbove(), 2, sigma=0.25)
    gen = torch.Generator().manual_seed(5)
    images = [
        torch.full(shape, 0.56) + 0.01 * torch.rand(shape, generator=gen)
        for shape in _MIXED_SHAPES
    ]
    images[3] = images[3].double()  # another dtype: converted to the noise dtype, as alone
    policy = sequential_policy(0.25, 2000, 0.01, **mode)  # type: ignore[arg-type]
    assert policy is not None
    items = [(i, x, 100 + i) for i, x in enumerate(images)]
    packed = dict(smoothed.certify_many(items, 50, policy, batch_size=900))
    for i, x in enumerate(images):
        alone = smoothed.certify(
            x, n0=50, n=2000, alpha=0.01, batch_size=900, seed=100 + i,
            **mode,  # type: ignore[arg-type]
        )  # fmt: skip
        assert (packed[i].prediction, packed[i].count, packed[i].n) == (
            alone.prediction, alone.count, alone.n,
        ), f"image {i} of shape {tuple(x.shape)}"  # fmt: skip
        assert packed[i].radius == alone.radius


def test_a_gray_image_packed_behind_a_color_one_keeps_its_radius() -> None:
    """The issue's reproduction: a 1-channel image behind a 3-channel one (true radius 0.3)."""
    smoothed = ps.SmoothedClassifier(_MeanAbove(), 2, sigma=0.25)
    gray = torch.full((1, 8, 8), 0.5 + 0.3 / 8)  # mean 0.5375: distance 0.3 to the boundary
    color = torch.full((3, 8, 8), 0.9)
    policy = sequential_policy(0.25, 20_000, 0.001, early_stop=True)
    assert policy is not None
    packed = dict(smoothed.certify_many([(0, color, 1), (1, gray, 2)], 100, policy, 20_000))
    alone = smoothed.certify(gray, n0=100, n=20_000, alpha=0.001, batch_size=20_000, seed=2,
                             early_stop=True)  # fmt: skip
    assert packed[1].radius == alone.radius
    assert alone.radius <= 0.3


def test_certify_many_leaves_no_inference_state_to_its_caller() -> None:
    """Between the certificates it yields, the caller's code runs in its own state."""
    lin = nn.Linear(48, 3)
    model = ps.wrap(nn.Sequential(nn.Flatten(), lin), method="full", normalize=None).train()
    smoothed = ps.SmoothedClassifier(model, 3, sigma=0.25)
    policy = sequential_policy(0.25, 1000, 0.01, early_stop=True)
    assert policy is not None
    data = _data(4)
    seen = []
    gen = smoothed.certify_many([(i, x, i) for i, (x, _) in enumerate(data)], 20, policy, 300)
    for _key, _cert in gen:
        seen.append((torch.is_grad_enabled(), torch.is_inference_mode_enabled(), model.training))
        y = lin(torch.ones(1, 48))
        assert y.requires_grad  # the caller can still train
        break  # leaving early closes the generator
    gen.close()
    assert seen == [(True, False, True)]
    assert model.training and torch.is_grad_enabled() and not torch.is_inference_mode_enabled()


def _golden_classifier() -> tuple[ps.SmoothedClassifier, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    x = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(1))
    return ps.SmoothedClassifier(model, 5, sigma=0.5), x


def test_predict_and_dataset_certificates_are_unchanged_golden() -> None:
    """Stored before fixed-n CERTIFY moved onto the packed engine (same torch CPU kernels)."""
    smoothed, x = _golden_classifier()
    assert smoothed.vote_counts(x, n=700, batch_size=128, seed=3).tolist() == [76, 433, 58, 37, 96]
    assert smoothed.predict(x, n=700, alpha=0.1, batch_size=128, seed=3) == 1
    data = [(torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(i)), i % 5)
            for i in range(5)]  # fmt: skip
    report = smoothed.certify_dataset(data, n0=20, n=300, alpha=0.01, batch_size=128, seed=4)
    assert [int(v) for v in report.predict] == [0, 1, 1, -1, 1]
    assert [r.count for r in report.rows] == [287, 195, 283, 124, 199]
    assert report.radius.tolist() == [
        0.7060066041460198, 0.10426168464777169, 0.6532404913503618, 0.0, 0.12192537741786716,
    ]  # fmt: skip


def test_fixed_n_certify_synchronises_with_the_host_once_per_image(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Counts stay on the device until the one decision: one ``.cpu()`` per image."""
    smoothed, x = _golden_classifier()
    calls = []
    real = torch.Tensor.cpu

    def counting(self: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        calls.append(tuple(self.shape))
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch.Tensor, "cpu", counting)
    smoothed.certify(x, n0=20, n=1000, alpha=0.01, batch_size=64, seed=0)
    assert len(calls) == 1
    calls.clear()
    data = [(x, 0)] * 4
    smoothed.certify_dataset(data, n0=20, n=1000, alpha=0.01, batch_size=64)
    assert len(calls) == 4
