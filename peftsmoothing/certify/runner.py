"""Certify a dataset image by image, one crash-safe log row per image (``certify_dataset``).

[`SmoothedClassifier.certify_dataset`][peftsmoothing.SmoothedClassifier.certify_dataset] checks
its arguments and resolves them into a ``DatasetRun`` (which images, which seeds, which
policy, which log settings); this module carries the run out:

- per-image seeds ``derive_seed(seed, idx)`` (``peftsmoothing.core.seeds``), so a certificate
  does not depend on the other images, on sharding or on resuming (docs/design.md,
  "Reproducibility");
- the log (``peftsmoothing.report.certlog``): lock, settings check, data-identity check of the
  rows already logged, torn-line recovery, one fsynced row per image;
- the images through the certification engine (``peftsmoothing.certify.engine``), inside the
  sampler's inference state for the whole dataset.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..core.fingerprint import image_fingerprint
from ..core.seeds import derive_seed
from ..core.validation import check_int, is_int
from ..report.accuracy import CertificationReport
from ..report.certlog import LogRow, OpenLog, check_identity, open_log
from .engine import certify_packed
from .sampling import NoiseSampler
from .sequential import SequentialPolicy

__all__ = ["DatasetRun", "certify_dataset", "dataset_info", "select_indices"]


@dataclass(frozen=True)
class DatasetRun:
    """One dataset certification, its arguments checked and resolved.

    Attributes:
        indices: The dataset indices to certify (after ``skip`` and ``shard``), in order.
        seed: Master seed: image ``i`` is certified with ``derive_seed(seed, i)``.
        n0: Selection samples per image.
        batch_size: Most noisy images per forward pass.
        policy: The stopping policy (``fixed_policy`` for fixed ``n``).
        settings: What the log's settings file records (``certlog.log_settings``), or, with
            no log, what ``CertificationReport.summary`` needs (``mode``, ``sequential``).
        log: The log file, or ``None``.
        resume: Continue an existing log.
        progress: Show a progress bar; ``None``: when stderr is a terminal.

    Examples:
        >>> from peftsmoothing.certify.sequential import fixed_policy
        >>> run = DatasetRun([0, 2], 0, 10, 100, fixed_policy(0.25, 100, 0.001), {})
        >>> run.policy.schedule.looks, run.resume
        ((100,), True)
    """

    indices: Sequence[int]
    seed: int
    n0: int
    batch_size: int
    policy: SequentialPolicy
    settings: Mapping[str, Any]
    log: str | os.PathLike[str] | None = None
    resume: bool = True
    progress: bool | None = None


def certify_dataset(
    sampler: NoiseSampler, dataset: Any, run: DatasetRun, *, stacklevel: int = 2
) -> CertificationReport:
    """Carry out ``run`` on ``dataset``: log each image's certificate as it comes.

    Each log row is flushed and fsynced; with ``run.resume`` images already in the log are
    skipped, and a torn last line (process killed mid-write) is truncated and that image
    certified again, so no row is ever lost or duplicated.

    Args:
        sampler: The smoothed classifier's sampler.
        dataset: Map-style dataset of ``(image (C, H, W) in [0, 1], int label)`` pairs.
        run: What to certify and how.
        stacklevel: Of the log's warnings, counted from the caller of this function.

    Returns:
        A [`CertificationReport`][peftsmoothing.CertificationReport] over ``run.indices``,
        including those already in the log.

    Raises:
        ValueError: For a log written with other settings or on other data, a corrupted log,
            or a label outside ``[0, num_classes)``.
        FileExistsError: If the log exists and ``run.resume`` is false.
        RuntimeError: If another process is certifying into the log.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from peftsmoothing.certify.sequential import fixed_policy
        >>> sampler = NoiseSampler(nn.Sequential(nn.Flatten(), nn.Linear(48, 2)), 2, 0.25)
        >>> data = [(torch.rand(3, 4, 4), i % 2) for i in range(4)]
        >>> run = DatasetRun([1, 3], 0, 10, 50, fixed_policy(0.25, 50, 0.001), {"mode": "fixed"})
        >>> certify_dataset(sampler, data, run).idx.tolist()
        [1, 3]
    """
    with contextlib.ExitStack() as stack:  # on exit, even by an error: session, bar, then log
        opened: OpenLog | None = None
        if run.log is not None:
            opened = open_log(run.log, dict(run.settings), run.resume, stacklevel=stacklevel + 1)
            stack.callback(opened.close)
            check_identity(opened, run.indices, lambda i: _load(dataset, i, sampler.num_classes)[2])
        done = {r.idx: r for r in reversed(opened.rows if opened else [])}  # first row counts
        results: dict[int, LogRow] = {i: done[i] for i in run.indices if i in done}
        correct = sum(r.correct for r in results.values())
        todo = [i for i in run.indices if i not in done]

        def items() -> Iterator[tuple[tuple[int, int, str], torch.Tensor, int]]:
            for idx in todo:  # the key carries what the row records of the data
                image, label, digest = _load(dataset, idx, sampler.num_classes)
                yield (idx, label, digest), image, derive_seed(run.seed, idx)

        show = sys.stderr.isatty() if run.progress is None else bool(run.progress)
        from tqdm.auto import tqdm

        bar = stack.enter_context(tqdm(
            total=len(run.indices), initial=len(results), unit="img", disable=not show,
            desc="certify", dynamic_ncols=True,
        ))  # fmt: skip
        stack.enter_context(sampler.inference())  # one session for the whole dataset
        certified = certify_packed(sampler, items(), run.n0, run.policy, run.batch_size)
        for (idx, label, digest), cert in certified:
            row = LogRow(
                idx=idx,
                label=label,
                predict=cert.prediction,
                radius=cert.radius,
                correct=int(cert.prediction == label),
                pa_lower=cert.pa_lower,
                count=cert.count,
                n=cert.n,
                seconds=cert.seconds,
                alpha=cert.alpha_spent,
                image_sha256=digest,
            )
            if opened is not None:
                opened.append(row)
            results[idx] = row
            correct += row.correct
            bar.set_postfix(cert_acc=f"{correct / len(results):.3f}", refresh=False)
            bar.update(1)
    report = CertificationReport([results[i] for i in run.indices])
    report.settings = dict(run.settings)
    return report


def _load(dataset: Any, idx: int, num_classes: int) -> tuple[torch.Tensor, int, str]:
    """Image ``idx`` of ``dataset``, its label (checked) and their fingerprint."""
    image, label = dataset[idx]
    if isinstance(label, torch.Tensor) and label.numel() == 1 and not label.is_floating_point():
        label = label.item()
    if not is_int(label) or not 0 <= label < num_classes:
        raise ValueError(
            f"the label of image {idx} must be an integer in [0, {num_classes}), got {label!r} "
            "(not an integer, or outside the classes)"
        )
    return image, int(label), image_fingerprint(image, label)


def dataset_info(dataset: Any, info: Mapping[str, Any] | None) -> dict[str, Any]:
    """What a log records of the data: its size, and the caller's ``info`` (checked).

    Examples:
        >>> dataset_info([0, 1, 2], {"name": "cifar10"})
        {'size': 3, 'name': 'cifar10'}
    """
    for key, value in (info or {}).items():
        if not isinstance(key, str) or key == "size":
            raise ValueError(f"dataset_info keys must be strings other than 'size', got {key!r}")
        if value is not None and not isinstance(value, (str, int, float, bool)):
            raise ValueError(f"dataset_info[{key!r}] must be a number, string, bool or None")
    return {"size": len(dataset) if hasattr(dataset, "__len__") else None, **(info or {})}


def select_indices(
    dataset: Any, indices: Sequence[int] | None, skip: int, shard: tuple[int, int] | None
) -> list[int]:
    """The indices to certify: ``indices`` (default: all), every ``skip``-th, then shard
    ``(i, k)``'s interleaved slice.

    Raises:
        ValueError: For indices out of range, duplicated or not integers, a dataset without
            ``len()`` and no ``indices``, or a shard that is not ``(i, k)``, ``0 <= i < k``.

    Examples:
        >>> select_indices(range(10), None, 2, (1, 2))
        [2, 6]
    """
    size: int | None = len(dataset) if hasattr(dataset, "__len__") else None
    if indices is None:
        if size is None:
            raise ValueError("the dataset has no len(); pass indices=")
        chosen = list(range(size))
    else:
        chosen = [check_int(i, "each index", minimum=0) for i in indices]
        if size is not None and max(chosen, default=-1) >= size:
            raise ValueError(f"index {max(chosen)} is out of range for a dataset of {size} images")
        if len(set(chosen)) != len(chosen):
            raise ValueError("indices contains duplicates")
    chosen = chosen[::skip]
    if shard is not None:
        pair = isinstance(shard, Sequence) and len(shard) == 2 and all(map(is_int, shard))
        if not pair or not 0 <= shard[0] < shard[1]:
            raise ValueError(f"shard must be a pair (i, k) with 0 <= i < k, got {shard!r}")
        chosen = chosen[int(shard[0]) :: int(shard[1])]
    return chosen
