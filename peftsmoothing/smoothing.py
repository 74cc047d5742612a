"""Randomized smoothing: ``SmoothedClassifier.predict / certify`` and the
[`Certificate`][peftsmoothing.Certificate].

PREDICT and CERTIFY are exactly the algorithms of Cohen, Rosenfeld & Kolter (2019). The smoothed
classifier ``g(x) = argmax_c P(f(x + d) = c)``, ``d ~ N(0, sigma^2 I)``, is evaluated with noise in
pixel space: the base model ``f`` takes images in [0, 1] and normalizes them itself
(docs/design.md, invariant 1), so ``sigma`` and the certified L2 radius are in the same units.

A [`Certificate`][peftsmoothing.Certificate] is a statistical statement: with probability at least
``1 - alpha`` over the noise, a non-abstaining prediction is the smoothed classifier's prediction on
every point within ``radius`` (L2) of ``x``. Selection (``n0``) and estimation (``n``) samples are
drawn independently; the bound is the exact one-sided Clopper-Pearson bound
(``peftsmoothing.stats``).

Sampling is ``sampling.NoiseSampler`` (noise and counts on the device, one host synchronisation
per call); datasets are ``runner``, logs ``certlog`` (whose names stay importable from here).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from . import runner
from .certlog import LOG_COLUMNS, LogRow, parse_log
from .fingerprint import model_fingerprint as model_fingerprint
from .packing import PackedResult, certify_packed
from .precision import PRECISIONS
from .sampling import STREAM_ESTIMATION, STREAM_SELECTION, NoiseSampler
from .sequential import Schedule, SequentialPolicy, sequential_policy
from .stats import ABSTAIN, certified_radius, clopper_pearson_lower, predict_from_counts
from .validation import (
    check_alpha,
    check_choice,
    check_int,
    check_positive_int,
    check_sigma,
)

if TYPE_CHECKING:
    from .report import CertificationReport

__all__ = [
    "ABSTAIN",
    "LOG_COLUMNS",
    "Certificate",
    "LogRow",
    "SmoothedClassifier",
    "parse_log",
]


@dataclass(frozen=True)
class Certificate:
    """The result of [`SmoothedClassifier.certify`][peftsmoothing.SmoothedClassifier.certify].

    Attributes:
        prediction: The certified class, or [`ABSTAIN`][peftsmoothing.ABSTAIN] (-1).
        radius: Certified L2 radius in pixel units of [0, 1] images; 0.0 when abstaining.
        pa_lower: One-sided ``(1 - alpha)`` Clopper-Pearson lower bound of the top class's
            probability under noise (reported also when abstaining).
        count: How many of the ``n`` estimation samples the base model put in the selected class.
        n: Number of estimation samples drawn (in a sequential mode: up to the look where
            sampling stopped).
        n0: Number of selection samples.
        seconds: Wall-clock time of the certification (with packing: the image's share of
            the forward batches it was in).
        alpha_spent: The level at which ``pa_lower`` holds: ``alpha`` for fixed-``n``
            CERTIFY; in a sequential mode the ``alpha_k`` of the look where sampling stopped
            (all looks' bounds hold at once with probability ``>= 1 - alpha``, so the
            certificate as a whole is wrong with probability at most ``alpha``).
        reason: Why a sequential mode stopped (``"certified"``, ``"futile"``, ``"final"``,
            ``"max_radius"``, ``"converged"``); ``None`` for fixed ``n``.

    Examples:
        >>> c = Certificate(prediction=3, radius=0.42, pa_lower=0.8, count=95, n=100, n0=10,
        ...                 seconds=0.1)
        >>> c.abstained
        False
    """

    prediction: int
    radius: float
    pa_lower: float
    count: int
    n: int
    n0: int
    seconds: float
    alpha_spent: float | None = None
    reason: str | None = None

    @property
    def abstained(self) -> bool:
        """Whether the smoothed classifier abstained (``prediction == ABSTAIN``)."""
        return self.prediction == ABSTAIN


class SmoothedClassifier(NoiseSampler):
    """The Gaussian-smoothed version of a classifier, with Cohen et al.'s PREDICT and CERTIFY.

    Args:
        base: The base classifier: takes a batch of images in [0, 1], shape (B, C, H, W), and
            returns logits (B, num_classes). Normalization must be inside it (``ps.wrap`` puts
            it there).
        num_classes: Number of classes; must equal the width of the model's output.
        sigma: Standard deviation of the Gaussian noise, in pixel units of [0, 1] images.
        device: Move the model to this device; default: where its parameters are.
        precision: ``"fp32"`` (default), or ``"bf16"`` / ``"fp16"`` autocast. The noise is
            always drawn in the model's own dtype (at least fp32), so a certificate stays a
            certificate of the (reduced-precision) base classifier.
        merge: If the model has a ``merged_for_inference()`` context manager (a
            [`PEFTModel`][peftsmoothing.PEFTModel] does), fold LoRA weights in while sampling.
        channels_last: Use the channels-last memory format while sampling. Default (``None``):
            on CUDA for convolutional networks (models with more than one ``Conv2d``).

    Raises:
        TypeError: If ``base`` is not an ``nn.Module``.
        ValueError: For ``sigma <= 0``, ``num_classes < 2`` or an unknown ``precision``.

    Examples:
        >>> import torch, peftsmoothing as ps
        >>> from torch import nn
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
        >>> smoothed = ps.SmoothedClassifier(model, num_classes=10, sigma=0.25)
        >>> cert = smoothed.certify(torch.rand(3, 8, 8), n0=10, n=200, alpha=0.001, seed=0)
        >>> cert.n, cert.prediction in range(-1, 10), cert.radius >= 0
        (200, True, True)
    """

    def __init__(
        self,
        base: nn.Module,
        num_classes: int,
        sigma: float,
        *,
        device: torch.device | str | None = None,
        precision: str = "fp32",
        merge: bool = True,
        channels_last: bool | None = None,
    ) -> None:
        if not isinstance(base, nn.Module):
            raise TypeError(f"base must be an nn.Module, got {type(base).__name__}")
        classes = check_int(num_classes, "num_classes", minimum=2)
        check_choice(precision, "precision", PRECISIONS)
        self.base: nn.Module = base
        self.num_classes: int = classes
        self.sigma: float = check_sigma(sigma)
        self.precision: str = precision
        self.merge: bool = bool(merge)
        self._device_override: torch.device | None = (
            torch.device(device) if device is not None else None
        )
        if self._device_override is not None:
            base.to(self._device_override)
        self.channels_last: bool | None = channels_last
        self._depth: int = 0

    def __repr__(self) -> str:
        return (
            f"SmoothedClassifier({type(self.base).__name__}, num_classes={self.num_classes}, "
            f"sigma={self.sigma}, precision={self.precision!r})"
        )

    # ------------------------------------------------------------------------ public API
    def predict(
        self,
        x: torch.Tensor,
        n: int = 1000,
        alpha: float = 0.001,
        batch_size: int = 1000,
        seed: int | None = None,
    ) -> int:
        """PREDICT of Cohen et al. (2019): the smoothed classifier's class, or
        [`ABSTAIN`][peftsmoothing.ABSTAIN].

        Draws ``n`` noisy samples and returns the most frequent class if a two-sided binomial
        test of the two largest counts rejects equality at level ``alpha``; then the returned
        class differs from the smoothed classifier's with probability at most ``alpha``.

        Args:
            x: One image (C, H, W) in [0, 1].
            n: Number of noise samples.
            alpha: Probability of returning a class other than the smoothed classifier's.
            batch_size: Noisy images per forward pass.
            seed: Seed of the noise; ``None`` draws one from torch's global generator.

        Returns:
            The class index, or ``ABSTAIN`` (-1).

        Raises:
            ValueError: For invalid arguments or inputs (see the class documentation).
            FloatingPointError: If the model returns a non-finite logit on any sample.

        Examples:
            >>> import torch, peftsmoothing as ps
            >>> from torch import nn
            >>> class Constant(nn.Module):
            ...     def forward(self, x):
            ...         return torch.tensor([0.0, 1.0]).repeat(len(x), 1)
            >>> ps.SmoothedClassifier(Constant(), 2, sigma=0.5).predict(torch.rand(1, 4, 4), n=50)
            1
        """
        check_positive_int(n, "n")  # n, then alpha: refused before any sample is drawn
        a = check_alpha(alpha)
        return predict_from_counts(self.vote_counts(x, n, batch_size, seed), a)

    def certify(
        self,
        x: torch.Tensor,
        n0: int = 100,
        n: int = 100_000,
        alpha: float = 0.001,
        batch_size: int = 1000,
        seed: int | None = None,
        *,
        radius: float | None = None,
        early_stop: bool = False,
        max_radius: float | None = None,
        tolerance: float | None = None,
        schedule: Schedule | None = None,
    ) -> Certificate:
        """CERTIFY of Cohen et al. (2019): a class and an L2 radius, wrong w.p. <= ``alpha``.

        Selects the top class from ``n0`` noisy samples, then bounds its probability from
        below with ``n`` independent samples (exact one-sided Clopper-Pearson bound
        ``pa_lower``). Abstains when ``pa_lower < 0.5``; otherwise the radius is
        ``sigma * Phi^-1(pa_lower)``.

        **Sequential modes** (docs/sequential.md) draw the estimation samples in looks
        (``Schedule.create(n, alpha)``: 256, 512, ... doubling, then ``n``) and stop at the
        first look where a policy decides; ``alpha`` is spread over the looks (union bound), so
        the certificate is still wrong with probability at most ``alpha``:

        - ``radius=r`` (target mode): stop as soon as the bound certifies ``r`` or shows it
          cannot be reached within ``n``; "certified at ``r``" is ``cert.radius >= r``
          (``cert.radius`` is what the final bound certifies, below ``r`` when not certified);
        - ``early_stop=True`` (or ``max_radius=`` / ``tolerance=``): certify the largest
          radius, stopping once ``max_radius`` is certified or more samples would raise the
          radius by less than ``tolerance`` (default ``0.05 * sigma``); the stopping rule is a
          heuristic and never affects soundness.

        ``cert.n`` is then the number of estimation samples drawn, ``cert.alpha_spent`` the
        level of the stopping look's bound and ``cert.reason`` why it stopped.

        Args:
            x: One image (C, H, W) in [0, 1].
            n0: Number of selection samples.
            n: Number of estimation samples.
            alpha: Failure probability of the certificate.
            batch_size: Noisy images per forward pass (memory only; does not change validity).
            seed: Seed of the noise (same seed, batch size and device: same certificate);
                ``None`` draws one from torch's global generator.
            radius: Target mode: the L2 radius to certify (``n`` is the most samples).
            early_stop: Early-stopping mode (``peftsmoothing.sequential.MaxRadiusPolicy``).
            max_radius: Early stopping: stop once this radius is certified.
            tolerance: Early stopping: stop when the projected gain at ``n`` is below this.
            schedule: The looks and their alphas (a ``peftsmoothing.sequential.Schedule``
                with ``n_max == n`` and ``alpha == alpha``); default ``Schedule.create(n,
                alpha)``.

        Returns:
            The [`Certificate`][peftsmoothing.Certificate].

        Raises:
            TypeError: If ``x`` is not a tensor.
            ValueError: For ``alpha`` outside (0, 1), ``n0``, ``n`` or ``batch_size`` < 1, an
                image that is not (C, H, W) or has non-finite values, or a model whose output
                width is not ``num_classes``.
            FloatingPointError: If the model returns a non-finite logit on any sample.

        Examples:
            >>> import torch, peftsmoothing as ps
            >>> from torch import nn
            >>> class Constant(nn.Module):
            ...     def forward(self, x):
            ...         return torch.tensor([0.0, 1.0]).repeat(len(x), 1)
            >>> smoothed = ps.SmoothedClassifier(Constant(), 2, sigma=0.5)
            >>> cert = smoothed.certify(torch.rand(1, 4, 4), n0=10, n=100, alpha=0.001)
            >>> cert.prediction, cert.count, round(cert.pa_lower, 6)  # 0.001 ** (1 / 100)
            (1, 100, 0.933254)
            >>> round(cert.radius, 4)  # 0.5 * Phi^-1(0.933254)
            0.7502
            >>> cert = smoothed.certify(torch.rand(1, 4, 4), n0=10, n=100_000, alpha=0.001,
            ...                         radius=0.5, seed=0)  # target mode
            >>> cert.radius >= 0.5, cert.n, cert.reason  # certified at the first look
            (True, 256, 'certified')
        """
        n0_ = check_positive_int(n0, "n0")
        n_ = check_positive_int(n, "n")
        a = check_alpha(alpha)
        b = check_positive_int(batch_size, "batch_size")
        s = self._resolve_seed(seed)
        policy = sequential_policy(
            self.sigma, n_, a, radius=radius, early_stop=early_stop, max_radius=max_radius,
            tolerance=tolerance, schedule=schedule,
        )  # fmt: skip
        if policy is not None:
            with self._inference():
                ((_, cert),) = self.certify_many([(0, x, s)], n0_, policy, b)
            return cert
        x_dev = self._prepare_input(x)
        start = time.perf_counter()
        with self._inference():
            counts0 = self._sample_counts(x_dev, n0_, b, self._generator(s, STREAM_SELECTION))
            counts = self._sample_counts(x_dev, n_, b, self._generator(s, STREAM_ESTIMATION))
            both = torch.stack([counts0, counts]).cpu()  # the one host synchronisation
        selection = self._class_counts(both[0], n0_)
        estimation = self._class_counts(both[1], n_)
        c_a = int(selection.argmax())
        count = int(estimation[c_a])
        pa_lower = clopper_pearson_lower(count, n_, a)
        if pa_lower < 0.5:
            prediction, radius = ABSTAIN, 0.0
        else:
            prediction, radius = c_a, certified_radius(self.sigma, pa_lower)
        return Certificate(
            prediction=prediction,
            radius=radius,
            pa_lower=pa_lower,
            count=count,
            n=n_,
            n0=n0_,
            seconds=time.perf_counter() - start,
            alpha_spent=a,
        )

    def certify_many(
        self,
        items: Iterable[tuple[Any, torch.Tensor, int]],
        n0: int,
        policy: SequentialPolicy,
        batch_size: int = 1000,
    ) -> Iterator[tuple[Any, Certificate]]:
        """Sequential CERTIFY of many images, their samples packed into shared batches.

        The engine under ``certify(..., radius=...)`` and ``certify_dataset`` in the
        sequential modes (``peftsmoothing.packing.certify_packed``): each image draws its
        noise from its own seeded streams, so its certificate does not depend on which images
        share its batches (up to the model's last-bit differences between batch layouts).
        Images of different shapes never share a batch. Eval mode, merged weights and
        inference mode hold only while the engine computes (``items`` is read then), never
        while the caller's loop body runs, and are restored if the caller stops early.

        Args:
            items: ``(key, image (C, H, W) in [0, 1], seed)`` per image, read lazily.
            n0: Selection samples per image.
            policy: A ``peftsmoothing.sequential.TargetRadiusPolicy`` or
                ``peftsmoothing.sequential.MaxRadiusPolicy`` with this ``sigma``.
            batch_size: Most noisy images per forward pass.

        Yields:
            ``(key, Certificate)`` per image, in the order the images finish.

        Raises:
            ValueError: If the policy's sigma is not this classifier's.
            FloatingPointError: If the model returns a non-finite logit.

        Examples:
            >>> import torch, peftsmoothing as ps
            >>> from torch import nn
            >>> from peftsmoothing.sequential import Schedule, MaxRadiusPolicy
            >>> smoothed = ps.SmoothedClassifier(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)),
            ...                                  3, sigma=0.5)
            >>> policy = MaxRadiusPolicy(0.5, Schedule.create(2000, 0.001))
            >>> items = [(i, torch.rand(3, 2, 2), i) for i in range(4)]
            >>> sorted(key for key, cert in smoothed.certify_many(items, 50, policy, 500))
            [0, 1, 2, 3]
        """
        n0_ = check_positive_int(n0, "n0")
        b = check_positive_int(batch_size, "batch_size")
        if getattr(policy, "sigma", self.sigma) != self.sigma:
            raise ValueError(
                f"the policy is for sigma={getattr(policy, 'sigma', None)}, this classifier "
                f"smooths with sigma={self.sigma}"
            )
        results = certify_packed(self, items, n0_, policy, b)
        while True:  # inference state only while the engine runs, never in the caller's code
            with self._inference():
                result = next(results, None)
            if result is None:
                return
            yield result.key, _certificate(result)

    def certify_dataset(
        self,
        dataset: Any,
        n0: int = 100,
        n: int = 100_000,
        alpha: float = 0.001,
        batch_size: int = 1000,
        *,
        log: str | os.PathLike[str] | None = None,
        resume: bool = True,
        indices: Sequence[int] | None = None,
        skip: int = 1,
        shard: tuple[int, int] | None = None,
        seed: int = 0,
        progress: bool | None = None,
        log_format: str = "peftsmoothing",
        dataset_info: Mapping[str, Any] | None = None,
        radius: float | None = None,
        early_stop: bool = False,
        max_radius: float | None = None,
        tolerance: float | None = None,
    ) -> CertificationReport:
        """Certify every ``skip``-th image of a dataset, logging one row per image as it goes.

        Per-image seeds, a crash-safe log that resumes (refusing other settings, models or
        data), shards and the Cohen et al. log format: see
        ``peftsmoothing.runner.certify_dataset`` for every argument and error. With
        ``radius=`` (target mode) or ``early_stop=True`` the images are certified
        sequentially, several in flight, their samples sharing each forward batch
        (``certify_many``).

        Examples:
            >>> import torch, peftsmoothing as ps
            >>> from torch import nn
            >>> data = [(torch.rand(3, 4, 4), i % 2) for i in range(4)]
            >>> model = nn.Sequential(nn.Flatten(), nn.Linear(48, 2))
            >>> smoothed = ps.SmoothedClassifier(model, 2, sigma=0.25)
            >>> report = smoothed.certify_dataset(data, n0=10, n=50, batch_size=50, skip=2)
            >>> len(report), report.idx.tolist()
            (2, [0, 2])
        """
        return runner.certify_dataset(
            self, dataset, n0, n, alpha, batch_size, log=log, resume=resume, indices=indices,
            skip=skip, shard=shard, seed=seed, progress=progress, log_format=log_format,
            dataset_info=dataset_info, radius=radius, early_stop=early_stop,
            max_radius=max_radius, tolerance=tolerance,
        )  # fmt: skip


def _certificate(result: PackedResult) -> Certificate:
    d = result.decision
    return Certificate(
        prediction=ABSTAIN if d.abstain else result.c_a,
        radius=d.radius,
        pa_lower=d.pa_lower,
        count=d.count,
        n=d.n,
        n0=result.n0,
        seconds=result.seconds,
        alpha_spent=d.alpha_spent,
        reason=d.reason,
    )
