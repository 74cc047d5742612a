"""Sequential CERTIFY of many images at once, their noise samples packed into shared batches.

In the sequential modes (``peftsmoothing.sequential``) an image often needs only a few
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
two logits are within rounding. There is one host synchronisation per forward batch (the
decisions need the counts).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .sampling import STREAM_ESTIMATION, STREAM_SELECTION, NoiseSampler
from .sequential import Decision, SequentialPolicy

__all__ = ["PackedResult", "certify_packed", "chunk_sizes"]


def chunk_sizes(num: int, batch_size: int) -> list[int]:
    """Split ``num`` samples into chunks of at most ``batch_size`` (the last one shorter).

    Examples:
        >>> chunk_sizes(2500, 1000)
        [1000, 1000, 500]
    """
    full, rest = divmod(num, batch_size)
    return [batch_size] * full + ([rest] if rest else [])


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


@dataclass(eq=False)
class _Job:
    key: Any
    x: torch.Tensor
    generators: tuple[torch.Generator, torch.Generator]
    pending: list[int]
    look: int = -1  # -1: selection; k >= 0: drawing the samples of look k
    acc: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    c_a: int = -1
    count: int = 0
    seconds: float = 0.0

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
    """Certify images sequentially, packing the samples of several images into each batch.

    Images are admitted from ``items`` in order while the samples pending in flight are
    fewer than ``batch_size``; each batch takes whole chunks, oldest images first, of the
    images with the oldest image's shape, dtype and device only (images of other shapes wait
    for a batch of their own, so every image is smoothed at its own shape). The caller
    enters ``sampler._inference()`` around each step of the iteration.

    Args:
        sampler: The smoothed classifier (its model, sigma and counting).
        items: ``(key, image (C, H, W) in [0, 1], seed)`` per image; read lazily.
        n0: Selection samples per image.
        policy: The stopping policy (its schedule gives the looks and their alphas).
        batch_size: Most noisy images per forward pass.

    Yields:
        A ``PackedResult`` per image, in the order the images finish.

    Raises:
        FloatingPointError: If the model returns a non-finite logit on an image's samples.

    Examples:
        >>> import torch, peftsmoothing as ps
        >>> from torch import nn
        >>> from peftsmoothing.sequential import Schedule, TargetRadiusPolicy
        >>> smoothed = ps.SmoothedClassifier(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)), 2, 0.5)
        >>> policy = TargetRadiusPolicy(0.5, 0.1, Schedule.create(1000, 0.01, first=100))
        >>> items = [(i, torch.rand(3, 2, 2), i) for i in range(3)]
        >>> with smoothed._inference():
        ...     done = list(certify_packed(smoothed, items, 20, policy, 256))
        >>> sorted(r.key for r in done)
        [0, 1, 2]
    """
    schedule = policy.schedule
    looks = schedule.looks
    width = sampler.num_classes + 1
    source = iter(items)
    jobs: list[_Job] = []
    exhausted = False
    while True:
        while not exhausted and sum(sum(j.pending) for j in jobs) < batch_size:
            try:
                key, image, seed = next(source)
            except StopIteration:
                exhausted = True
                break
            start = time.perf_counter()
            x = sampler._prepare_input(image)
            gens = (
                sampler._generator(seed, STREAM_SELECTION),
                sampler._generator(seed, STREAM_ESTIMATION),
            )
            job = _Job(key, x, gens, chunk_sizes(n0, batch_size))
            job.acc = np.zeros(width, dtype=np.int64)
            job.seconds = time.perf_counter() - start
            jobs.append(job)
        if not jobs:
            return
        picked: list[tuple[_Job, int]] = []
        total = 0
        kind = _kind(jobs[0].x)  # the oldest image's shape: others wait for their own batch
        for job in jobs:
            if _kind(job.x) != kind:
                continue
            while job.pending and total + job.pending[0] <= batch_size:
                size = job.pending.pop(0)
                picked.append((job, size))
                total += size
        start = time.perf_counter()
        counts = sampler._sample_chunks([(j.x, s, j.generator) for j, s in picked])
        host = counts.cpu().numpy()  # the one host synchronisation per batch
        elapsed = time.perf_counter() - start
        for (job, size), row in zip(picked, host, strict=True):
            job.acc += row
            job.seconds += elapsed * size / total
        finished: list[_Job] = []
        for job in jobs:
            if job.pending:
                continue
            votes = sampler._class_counts(torch.from_numpy(job.acc), int(job.acc.sum()))
            if job.look < 0:
                job.c_a = int(np.argmax(votes.numpy()))
            else:
                job.count = int(votes[job.c_a])
                decision = policy.decide(job.look, job.count)
                if decision.stop:
                    finished.append(job)
                    yield PackedResult(job.key, job.c_a, decision, n0, job.seconds)
                    continue
            if job.look < 0:
                job.acc[:] = 0  # estimation counts start afresh, apart from selection
            job.look += 1
            drawn = looks[job.look - 1] if job.look > 0 else 0
            job.pending = chunk_sizes(looks[job.look] - drawn, batch_size)
        if finished:
            jobs = [j for j in jobs if j not in finished]
