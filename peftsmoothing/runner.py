"""Certify a dataset image by image, one crash-safe log row per image (``certify_dataset``).

:meth:`peftsmoothing.SmoothedClassifier.certify_dataset` delegates here. The runner decides
*which* images are certified and *with which seed*, and records each certificate as it comes:

- index selection: ``indices``, every ``skip``-th of them, then shard ``i`` of ``k``;
- per-image seeds ``derive_seed(seed, idx)`` (:mod:`peftsmoothing.seeds`), so a certificate
  does not depend on the other images, on sharding or on resuming (docs/design.md,
  "Reproducibility");
- the log (:mod:`peftsmoothing.certlog`): settings check, lock, torn-line recovery, one fsynced
  row per image.

It drives any :class:`Certifier`; it never imports :mod:`peftsmoothing.smoothing`.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from .certlog import LogRow, _lock_log, _open_log, log_settings
from .fingerprint import model_fingerprint
from .report import CertificationReport
from .seeds import derive_seed
from .validation import check_alpha, check_positive_int, check_seed, is_int

__all__ = ["Certifier", "certify_dataset"]


class _Certificate(Protocol):
    """The fields of :class:`peftsmoothing.Certificate` that a log row records."""

    @property
    def prediction(self) -> int: ...
    @property
    def radius(self) -> float: ...
    @property
    def pa_lower(self) -> float: ...
    @property
    def count(self) -> int: ...
    @property
    def n(self) -> int: ...
    @property
    def seconds(self) -> float: ...


class Certifier(Protocol):
    """What the runner uses of a smoothed classifier (:class:`peftsmoothing.SmoothedClassifier`).

    ``base``, ``sigma``, ``num_classes`` and ``precision`` go into the log's settings;
    ``_inference()`` is entered once around the whole dataset (eval mode and merged weights
    once, not per image); ``certify`` certifies one image.
    """

    base: nn.Module
    sigma: float
    num_classes: int
    precision: str

    def _inference(self) -> contextlib.AbstractContextManager[None]: ...

    def certify(
        self,
        x: torch.Tensor,
        n0: int = ...,
        n: int = ...,
        alpha: float = ...,
        batch_size: int = ...,
        seed: int | None = ...,
    ) -> _Certificate: ...


def certify_dataset(
    certifier: Certifier,
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
) -> CertificationReport:
    """Certify every ``skip``-th image of ``dataset`` with ``certifier``, logging as it goes.

    The arguments, results and errors are those of
    :meth:`peftsmoothing.SmoothedClassifier.certify_dataset`, which calls this with itself as
    ``certifier``.

    Examples:
        >>> import torch, peftsmoothing as ps
        >>> from torch import nn
        >>> data = [(torch.rand(3, 4, 4), i % 2) for i in range(4)]
        >>> smoothed = ps.SmoothedClassifier(nn.Sequential(nn.Flatten(), nn.Linear(48, 2)), 2,
        ...                                  sigma=0.25)
        >>> certify_dataset(smoothed, data, n0=10, n=50, batch_size=50, shard=(1, 2)).idx.tolist()
        [1, 3]
    """
    n0_ = check_positive_int(n0, "n0")
    n_ = check_positive_int(n, "n")
    a = check_alpha(alpha)
    b = check_positive_int(batch_size, "batch_size")
    skip_ = check_positive_int(skip, "skip")
    master = check_seed(seed, allow_none=False)
    assert master is not None
    selected = _select_indices(dataset, indices, skip_, shard)

    done: dict[int, LogRow] = {}
    handle = lock = None
    if log is not None:
        meta = log_settings(
            sigma=certifier.sigma, n0=n0_, n=n_, alpha=a, seed=master,
            num_classes=certifier.num_classes, precision=certifier.precision,
            model_sha256=model_fingerprint(certifier.base),
        )  # fmt: skip
        lock = _lock_log(Path(log))
        try:
            # stacklevel 4: _open_log <- here <- SmoothedClassifier.certify_dataset <- the user
            handle, rows = _open_log(Path(log), meta, resume, stacklevel=4)
        except BaseException:
            if lock is not None:
                lock.close()
            raise
        for row in rows:
            done.setdefault(row.idx, row)
    results: dict[int, LogRow] = {i: done[i] for i in selected if i in done}
    correct = sum(r.correct for r in results.values())
    todo = [i for i in selected if i not in done]

    show = sys.stderr.isatty() if progress is None else bool(progress)
    from tqdm.auto import tqdm

    bar = tqdm(
        total=len(selected), initial=len(results), unit="img", disable=not show,
        desc="certify", dynamic_ncols=True,
    )  # fmt: skip
    try:
        with certifier._inference():
            for idx in todo:
                image, label = dataset[idx]
                label_ = _check_label(label, idx, certifier.num_classes)
                cert = certifier.certify(image, n0_, n_, a, b, seed=derive_seed(master, idx))
                row = LogRow(
                    idx=idx,
                    label=label_,
                    predict=cert.prediction,
                    radius=cert.radius,
                    correct=int(cert.prediction == label_),
                    pa_lower=cert.pa_lower,
                    count=cert.count,
                    n=cert.n,
                    seconds=cert.seconds,
                )
                if handle is not None:
                    handle.write(row.to_line())
                    handle.flush()
                    os.fsync(handle.fileno())
                results[idx] = row
                correct += row.correct
                bar.set_postfix(cert_acc=f"{correct / len(results):.3f}", refresh=False)
                bar.update(1)
    finally:
        bar.close()
        if handle is not None:
            handle.close()
        if lock is not None:
            lock.close()
    return CertificationReport([results[i] for i in selected])


def _check_label(label: object, idx: int, num_classes: int) -> int:
    if isinstance(label, torch.Tensor):
        if label.numel() != 1 or label.is_floating_point():
            raise ValueError(f"the label of image {idx} must be one integer, got {label!r}")
        label = label.item()
    if not is_int(label):
        raise ValueError(f"the label of image {idx} must be an integer, got {label!r}")
    value = int(label)  # type: ignore[call-overload]
    if not 0 <= value < num_classes:
        raise ValueError(f"the label {label} of image {idx} is outside [0, {num_classes})")
    return value


def _select_indices(
    dataset: Any, indices: Sequence[int] | None, skip: int, shard: tuple[int, int] | None
) -> list[int]:
    size: int | None = len(dataset) if hasattr(dataset, "__len__") else None
    if indices is None:
        if size is None:
            raise ValueError("the dataset has no len(); pass indices=")
        chosen = list(range(size))
    else:
        chosen = []
        for i in indices:
            if not is_int(i) or i < 0:
                raise ValueError(f"indices must be non-negative integers, got {i!r}")
            if size is not None and i >= size:
                raise ValueError(f"index {i} is out of range for a dataset of {size} images")
            chosen.append(int(i))
        if len(set(chosen)) != len(chosen):
            raise ValueError("indices contains duplicates")
    chosen = chosen[::skip]
    if shard is not None:
        try:
            part, parts = shard
        except (TypeError, ValueError):
            raise ValueError(f"shard must be a pair (i, k), got {shard!r}") from None
        if not (is_int(part) and is_int(parts)) or parts < 1 or not 0 <= part < parts:
            raise ValueError(f"shard must be (i, k) with 0 <= i < k, got {shard!r}")
        chosen = chosen[int(part) :: int(parts)]
    return chosen
