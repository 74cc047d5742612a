"""Sequential CERTIFY of many images at once, their noise samples packed into shared batches.

In the sequential modes (``peftsmoothing.certify.sequential``) an image often needs only a few
hundred samples per look, far fewer than a forward batch holds. ``certify_packed`` keeps
several images in flight and fills each forward pass with the pending samples of as many of
them as fit (a scheduler over images; Voráček, 2024, batches many images through one queue).

What packing does not change (docs/sequential.md, "Packing"):

- images of different shapes (or dtypes, or devices) never share a forward batch;
- each image draws its selection and estimation noise from its own generators, seeded with
  ``derive_seed(seed, stream)`` from the image's own seed, in chunks whose sizes depend only
  on ``n0``, the look schedule and ``batch_size`` (never on the other images), so its noise
  is the same whichever images share its batches, and the same as ``certify(x, radius=...)``
  of that image alone;
- selection samples (``n0``) are counted apart from the estimation samples and choose
  ``c_A`` before the first estimation sample is drawn;
- a policy decides after each look from that image's cumulative count only.

What it may change: the model's outputs can differ in the last bits with the composition of
the batch (matrix kernels pick their blocking by batch size), which can flip a vote whose top
two logits are within rounding.

Fixed-``n`` CERTIFY is the one-look schedule (``certify.sequential.fixed_policy``), run by
this same engine: its noise and chunks are those of Cohen et al.'s CERTIFY drawn in
``batch_size`` pieces. Counts stay on the device until a look needs a decision, so fixed ``n``
costs one host synchronisation per image, a sequential mode one per batch that ends a look.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from ..core.stats import ABSTAIN
from .sampling import STREAM_ESTIMATION, STREAM_SELECTION, Chunk, NoiseSampler
from .sequential import Decision, SequentialPolicy

__all__ = ["Certificate", "PackedResult", "certify_packed", "chunk_sizes"]


def chunk_sizes(num: int, batch_size: int) -> list[int]:
    """Split ``num`` samples into chunks of at most ``batch_size`` (the last one shorter).

    Examples:
        >>> chunk_sizes(2500, 1000)
        [1000, 1000, 500]
    """
    full, rest = divmod(num, batch_size)
    return [batch_size] * full + ([rest] if rest else [])


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


@dataclass(frozen=True)
class PackedResult:
    """One image's outcome: its selected class, the policy's final decision, its time.

    Attributes:
        key: What the caller passed with the image (e.g. its dataset index).
        c_a: The class chosen by the ``n0`` selection samples.
        decision: The policy's decision at the look where sampling stopped.
        n0: Selection samples drawn.
        seconds: The image's share of the forward time: each batch's time split over its
            chunks by sample count (so the images' seconds add up to the wall time).
    """

    key: Any
    c_a: int
    decision: Decision
    n0: int
    seconds: float

    @property
    def prediction(self) -> int:
        """``c_a``, or ``ABSTAIN`` when the decision abstains."""
        return ABSTAIN if self.decision.abstain else self.c_a

    def certificate(self, sequential: bool = True) -> Certificate:
        """The [`Certificate`][peftsmoothing.Certificate] (``reason`` only if ``sequential``)."""
        d = self.decision
        return Certificate(
            prediction=self.prediction,
            radius=d.radius,
            pa_lower=d.pa_lower,
            count=d.count,
            n=d.n,
            n0=self.n0,
            seconds=self.seconds,
            alpha_spent=d.alpha_spent,
            reason=d.reason if sequential else None,
        )


@dataclass(eq=False)
class _Job:
    key: Any
    x: torch.Tensor
    generators: tuple[torch.Generator, torch.Generator]
    pending: list[int]
    selection: torch.Tensor  # counts of the n0 selection samples (device)
    votes: torch.Tensor  # counts of the estimation samples so far (device)
    look: int = -1  # -1: selection; k >= 0: drawing the samples of look k
    c_a: int = -1
    seconds: float = 0.0

    @property
    def counts(self) -> torch.Tensor:
        return self.selection if self.look < 0 else self.votes

    @property
    def generator(self) -> torch.Generator:
        return self.generators[0 if self.look < 0 else 1]


def _kind(x: torch.Tensor) -> tuple[Any, ...]:
    """What images must share to share a batch: shape, dtype and device."""
    return (tuple(x.shape), x.dtype, x.device)


def certify_packed(
    sampler: NoiseSampler,
    items: Iterable[tuple[Any, torch.Tensor, int]],
    n0: int,
    policy: SequentialPolicy,
    batch_size: int,
) -> Iterator[PackedResult]:
    """Certify images, packing the samples of several images into each forward batch.

    Images are admitted from ``items`` in order while the images in flight need fewer than
    ``batch_size`` samples before their next decisions (so fixed-``n`` CERTIFY, whose one
    decision comes after ``n0 + n`` samples, certifies about one image at a time, and the
    sequential modes keep several in flight); each batch takes whole chunks, oldest images
    first, of the images with the oldest image's shape, dtype and device only (images of other
    shapes wait for a batch of their own, so every image is smoothed at its own shape). The
    caller enters ``sampler.inference()`` around each step of the iteration.

    Args:
        sampler: The model, sigma and counting.
        items: ``(key, image (C, H, W) in [0, 1], seed)`` per image; read lazily.
        n0: Selection samples per image.
        policy: The stopping policy (its schedule gives the looks and their alphas); fixed
            ``n`` is ``peftsmoothing.certify.sequential.fixed_policy``.
        batch_size: Most noisy images per forward pass.

    Yields:
        A ``PackedResult`` per image, in the order the images finish.

    Raises:
        FloatingPointError: If the model returns a non-finite logit on an image's samples.
        Exception: Whatever reading or checking an image from ``items`` raised; the images
            already in flight are finished up to their next decision (and those that stop
            there yielded) first, so an interrupted run loses no finished certificate.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from peftsmoothing.certify.sequential import Schedule, TargetRadiusPolicy
        >>> sampler = NoiseSampler(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)), 2, 0.5)
        >>> policy = TargetRadiusPolicy(0.5, 0.1, Schedule.create(1000, 0.01, first=100))
        >>> items = [(i, torch.rand(3, 2, 2), i) for i in range(3)]
        >>> with sampler.inference():
        ...     done = list(certify_packed(sampler, items, 20, policy, 256))
        >>> sorted(r.key for r in done)
        [0, 1, 2]
    """
    looks = policy.schedule.looks
    width = sampler.num_classes + 1
    source = iter(items)
    jobs: list[_Job] = []
    exhausted = False
    clock = time.perf_counter()  # start of the work not yet timed (timed at each sync)
    untimed: list[tuple[_Job, int]] = []
    failure: BaseException | None = None  # reading an image failed: finish the others first
    while True:
        while not exhausted and sum(_to_decision(j, looks) for j in jobs) < batch_size:
            try:
                key, image, seed = next(source)
                x = sampler.prepare(image)
            except StopIteration:
                exhausted = True
                break
            except BaseException as err:  # raised once the images in flight are logged
                failure, exhausted = err, True
                break
            zeros = torch.zeros(2, width, dtype=torch.long, device=x.device)
            jobs.append(_Job(
                key, x,
                (sampler.generator(seed, STREAM_SELECTION),
                 sampler.generator(seed, STREAM_ESTIMATION)),
                chunk_sizes(n0, batch_size), zeros[0], zeros[1],
            ))  # fmt: skip
        if not jobs:
            if failure is not None:
                raise failure
            return
        kind = _kind(jobs[0].x)  # the oldest image's shape: others wait for their own batch
        picked: list[tuple[_Job, int]] = []
        total = 0
        for job in jobs:
            while _kind(job.x) == kind and job.pending and total + job.pending[0] <= batch_size:
                picked.append((job, job.pending.pop(0)))
                total += picked[-1][1]
        counts = sampler.count([Chunk(j.x, size, j.generator) for j, size in picked])
        for (job, _), row in zip(picked, counts, strict=True):
            job.counts.add_(row)
        untimed += picked
        deciding: list[_Job] = []
        for job in jobs:
            if job.pending:
                continue
            if job.look < 0:  # selection done: estimation starts afresh, no decision yet
                job.look = 0
                job.pending = chunk_sizes(looks[0], batch_size)
            else:
                deciding.append(job)
        if not deciding:
            continue
        host = torch.stack([t for j in deciding for t in (j.selection, j.votes)]).cpu()
        clock = _share_time(untimed, clock)  # the sync above ended the untimed work
        for i, job in enumerate(deciding):
            if job.c_a < 0:
                job.c_a = int(sampler.class_counts(host[2 * i]).argmax())
            count = int(sampler.class_counts(host[2 * i + 1])[job.c_a])
            decision = policy.decide(job.look, count)
            if decision.stop or failure is not None:
                jobs.remove(job)
                if decision.stop:
                    yield PackedResult(job.key, job.c_a, decision, n0, job.seconds)
                continue
            job.look += 1
            job.pending = chunk_sizes(looks[job.look] - looks[job.look - 1], batch_size)


def _to_decision(job: _Job, looks: tuple[int, ...]) -> int:
    """Samples ``job`` draws before its next decision (selection leads into the first look)."""
    return sum(job.pending) + (looks[0] if job.look < 0 else 0)


def _share_time(work: list[tuple[_Job, int]], since: float) -> float:
    """Split the time since ``since`` over ``work``'s chunks by sample count; empty it."""
    now = time.perf_counter()
    total = sum(size for _, size in work)
    for job, size in work:
        job.seconds += (now - since) * size / total
    work.clear()
    return now
