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
from .sequential import SequentialPolicy

__all__ = ["Certificate", "certify_packed", "chunk_sizes"]


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


@dataclass(eq=False)
class _Job:
    key: Any
    x: torch.Tensor
    generators: list[torch.Generator]  # of the selection and of the estimation samples
    pending: list[int]  # sizes of the chunks still to draw before the next decision
    counts: torch.Tensor  # (2, num_classes + 1) on the device: selection, estimation so far
    look: int = -1  # -1: selection; k >= 0: drawing the samples of look k
    c_a: int = -1
    seconds: float = 0.0

    @property
    def stage(self) -> int:
        """0 while drawing the selection samples, 1 while drawing estimation samples."""
        return int(self.look >= 0)

    def to_decision(self, looks: tuple[int, ...]) -> int:
        """Samples to draw before the next decision (selection leads into the first look)."""
        return sum(self.pending) + (looks[0] if self.look < 0 else 0)

    def advance(self, looks: tuple[int, ...], batch_size: int) -> None:
        """Start drawing the samples of the next look (after selection: of the first)."""
        self.look += 1
        drawn = looks[self.look - 1] if self.look else 0
        self.pending = chunk_sizes(looks[self.look] - drawn, batch_size)


def _kind(x: torch.Tensor) -> tuple[Any, ...]:
    """What images must share to share a batch: shape, dtype and device."""
    return (tuple(x.shape), x.dtype, x.device)


def certify_packed(
    sampler: NoiseSampler,
    items: Iterable[tuple[Any, torch.Tensor, int]],
    n0: int,
    policy: SequentialPolicy,
    batch_size: int,
) -> Iterator[tuple[Any, Certificate]]:
    """Certify images, packing the samples of several images into each forward batch.

    Images are admitted from ``items`` in order while the images in flight need fewer than
    ``batch_size`` samples before their next decisions (so fixed-``n`` CERTIFY, whose one
    decision comes after ``n0 + n`` samples, certifies about one image at a time, and the
    sequential modes keep several in flight); each batch takes whole chunks, oldest images
    first, of the images with the oldest image's shape, dtype and device only (images of other
    shapes wait for a batch of their own, so every image is smoothed at its own shape). Each
    step runs inside ``sampler.inference()``, left before the certificates it finished are
    yielded, so the caller's code never runs in the inference state.

    Args:
        sampler: The model, sigma and counting.
        items: ``(key, image (C, H, W) in [0, 1], seed)`` per image; read lazily.
        n0: Selection samples per image.
        policy: The stopping policy (its schedule gives the looks and their alphas); fixed
            ``n`` is ``peftsmoothing.certify.sequential.fixed_policy``.
        batch_size: Most noisy images per forward pass.

    Yields:
        ``(key, Certificate)`` per image, in the order the images finish; ``reason`` says why
        the policy stopped (the caller drops it for fixed ``n``).

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
        >>> done = list(certify_packed(sampler, items, 20, policy, 256))
        >>> sorted(key for key, cert in done)
        [0, 1, 2]
    """
    looks = policy.schedule.looks
    source: Iterator[tuple[Any, torch.Tensor, int]] | None = iter(items)  # None: all read
    jobs: list[_Job] = []
    clock = time.perf_counter()  # start of the work not yet timed (timed at each sync)
    untimed: list[tuple[_Job, int]] = []
    failure: BaseException | None = None  # reading an image failed: finish the others first
    while True:
        finished: list[tuple[Any, Certificate]] = []
        with sampler.inference():  # left before the caller sees the finished certificates
            while source is not None and sum(j.to_decision(looks) for j in jobs) < batch_size:
                try:
                    key, image, seed = next(source)
                    x = sampler.prepare(image)
                except StopIteration:
                    source = None
                    break
                except BaseException as err:  # raised once the images in flight are logged
                    failure, source = err, None
                    break
                gens = [sampler.generator(seed, s) for s in (STREAM_SELECTION, STREAM_ESTIMATION)]
                zeros = torch.zeros(2, sampler.num_classes + 1, dtype=torch.long, device=x.device)
                jobs.append(_Job(key, x, gens, chunk_sizes(n0, batch_size), zeros))
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
            chunks = [Chunk(job.x, size, job.generators[job.stage]) for job, size in picked]
            for (job, _), row in zip(picked, sampler.count(chunks), strict=True):
                job.counts[job.stage].add_(row)
            untimed += picked
            for job in jobs:
                if job.look < 0 and not job.pending:  # selection done: no decision yet
                    job.advance(looks, batch_size)
            deciding = [job for job in jobs if not job.pending]
            if not deciding:
                continue
            host = torch.stack([job.counts for job in deciding]).cpu()
            clock = _share_time(untimed, clock)  # the sync above ended the untimed work
            for job, (selection, votes) in zip(deciding, host, strict=True):
                if job.c_a < 0:
                    job.c_a = int(sampler.class_counts(selection).argmax())
                decision = policy.decide(job.look, int(sampler.class_counts(votes)[job.c_a]))
                if not decision.stop and failure is None:
                    job.advance(looks, batch_size)
                    continue
                jobs.remove(job)
                if decision.stop:
                    certificate = Certificate(
                        prediction=ABSTAIN if decision.abstain else job.c_a,
                        radius=decision.radius,
                        pa_lower=decision.pa_lower,
                        count=decision.count,
                        n=decision.n,
                        n0=n0,
                        seconds=job.seconds,
                        alpha_spent=decision.alpha_spent,
                        reason=decision.reason,
                    )
                    finished.append((job.key, certificate))
        yield from finished


def _share_time(work: list[tuple[_Job, int]], since: float) -> float:
    """Split the time since ``since`` over ``work``'s chunks by sample count; empty it."""
    now = time.perf_counter()
    total = sum(size for _, size in work)
    for job, size in work:
        job.seconds += (now - since) * size / total
    work.clear()
    return now
