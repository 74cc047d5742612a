"""Certify a dataset image by image, one crash-safe log row per image (``certify_dataset``).

[`SmoothedClassifier.certify_dataset`][peftsmoothing.SmoothedClassifier.certify_dataset] delegates
here. The runner decides
*which* images are certified and *with which seed*, and records each certificate as it comes:

- index selection: ``indices``, every ``skip``-th of them, then shard ``i`` of ``k``;
- per-image seeds ``derive_seed(seed, idx)`` (``peftsmoothing.seeds``), so a certificate
  does not depend on the other images, on sharding or on resuming (docs/design.md,
  "Reproducibility");
- the log (``peftsmoothing.certlog``): lock, settings check, data-identity check of the
  rows already logged, torn-line recovery, one fsynced row per image.

It drives any ``Certifier``; it never imports ``peftsmoothing.smoothing``.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import torch
from torch import nn

from .certlog import LOG_FORMATS, LogRow, OpenLog, check_identity, log_settings, open_log
from .fingerprint import image_fingerprint, model_fingerprint
from .report import CertificationReport
from .seeds import derive_seed
from .sequential import SequentialPolicy, policy_settings, sequential_policy
from .validation import check_alpha, check_choice, check_positive_int, check_seed, is_int

__all__ = ["Certifier", "certify_dataset"]


class _Certificate(Protocol):
    """The fields of [`Certificate`][peftsmoothing.Certificate] that a log row records."""

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
    @property
    def alpha_spent(self) -> float | None: ...


class Certifier(Protocol):
    """What the runner uses of a smoothed classifier
    ([`SmoothedClassifier`][peftsmoothing.SmoothedClassifier]).

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

    def certify_many(
        self,
        items: Iterable[tuple[int, torch.Tensor, int]],
        n0: int,
        policy: SequentialPolicy,
        batch_size: int,
    ) -> Iterator[tuple[int, _Certificate]]: ...


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
    log_format: str = "peftsmoothing",
    dataset_info: Mapping[str, Any] | None = None,
    radius: float | None = None,
    early_stop: bool = False,
    max_radius: float | None = None,
    tolerance: float | None = None,
) -> CertificationReport:
    """Certify every ``skip``-th image of ``dataset`` with ``certifier``, logging as it goes.

    [`SmoothedClassifier.certify_dataset`][peftsmoothing.SmoothedClassifier.certify_dataset] calls
    this with itself as ``certifier``. Image ``i`` is certified with a seed derived from ``(seed,
    i)``, so its certificate does not depend on which images were certified before it, on ``skip``,
    on sharding or on resuming. Each log row is flushed and fsynced; with ``resume=True`` images
    already in the log are skipped, and a torn last line (process killed mid-write) is
    truncated and that image certified again, so no row is ever lost or duplicated.

    Args:
        certifier: The smoothed classifier (``Certifier``).
        dataset: Map-style dataset of ``(image (C, H, W) in [0, 1], int label)`` pairs.
        n0: Number of selection samples per image.
        n: Number of estimation samples per image.
        alpha: Failure probability of each certificate.
        batch_size: Noisy images per forward pass.
        log: Tab-separated log to write, one header line and one row per image, plus the
            settings file ``<log>.json`` next to the log's resolved path; ``None``: no log.
            While certifying, the process holds a lock on the log file itself.
        resume: Continue an existing log. Resuming is refused for a log written with other
            settings (sigma, n0, n, alpha, seed, precision, model, columns, dataset info), for a
            log with rows but no settings file, and (format 2) when an image already logged is
            not the same image and label any more (each row's ``image_sha256``). A format-1
            log (release 0.1) resumes in format 1, with a warning that its data identity
            cannot be checked. If ``False`` an existing log is an error.
        indices: Dataset indices to consider (default: all).
        skip: Certify every ``skip``-th of those indices (Cohen et al. use 20 on CIFAR-10).
        shard: ``(i, k)``: certify only the ``i``-th of ``k`` disjoint, interleaved slices
            of the selected indices (one per process or GPU; merge logs with
            [`CertificationReport.from_logs`][peftsmoothing.CertificationReport.from_logs]).
        seed: Master seed of the per-image seeds.
        progress: Show a progress bar (images/s, running certified accuracy); default:
            when stderr is a terminal.
        log_format: ``"peftsmoothing"`` (format 2, ``peftsmoothing.certlog.LOG_COLUMNS``)
            or ``"cohen"``: Cohen et al.'s six columns (``idx label predict radius correct
            time``, ``time`` as ``str(datetime.timedelta)``), readable by their analysis code.
            A Cohen-format log has our settings file beside it, so resuming is still checked
            against the settings, but its rows carry no data identity, so resuming it on other
            data cannot be detected.
        dataset_info: What identifies the data beyond its size (e.g. ``{"name": "cifar10",
            "split": "test", "image_size": 32}``), recorded in the settings' ``"dataset"``;
            values must be JSON numbers, strings, booleans or ``None``.
        radius: Target mode: certify whether each image's radius reaches ``radius``,
            sequentially (``n`` is then ``n_max``; see ``sequential_policy``). Only
            certified accuracy at ``radius`` is meaningful in such a log.
        early_stop: Early-stopping mode: certify the largest radius, stopping when more
            samples would add little (``max_radius``, ``tolerance``: see
            ``peftsmoothing.sequential.MaxRadiusPolicy``).
        max_radius: Early stopping: stop once this radius is certified.
        tolerance: Early stopping: stop when the projected gain is below this.

            In the sequential modes the samples of several images share each forward
            batch (``peftsmoothing.packing``); each row records the samples drawn
            (``n``) and the alpha of the look it stopped at (``alpha``).

    Returns:
        A [`CertificationReport`][peftsmoothing.CertificationReport] over the selected images (this
        shard's), including those already in the log.

    Raises:
        ValueError: For invalid arguments, a log written with other settings or on other data,
            a corrupted log, or a label outside ``[0, num_classes)``.
        FileExistsError: If ``log`` exists and ``resume=False``.
        RuntimeError: If another process is certifying into ``log``.

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
    policy = sequential_policy(
        certifier.sigma, n_, a, radius=radius, early_stop=early_stop, max_radius=max_radius,
        tolerance=tolerance,
    )  # fmt: skip
    mode, params = ("fixed", None) if policy is None else policy_settings(policy)

    columns = check_choice(log_format, "log_format", LOG_FORMATS)
    info = _dataset_info(dataset, dataset_info)

    done: dict[int, LogRow] = {}
    opened: OpenLog | None = None
    if log is not None:
        meta = log_settings(
            sigma=certifier.sigma, n0=n0_, n=n_, alpha=a, seed=master,
            num_classes=certifier.num_classes, precision=certifier.precision,
            model_sha256=model_fingerprint(certifier.base), columns=columns, dataset=info,
            mode=mode, sequential=params,
        )  # fmt: skip
        # stacklevel 4: open_log <- here <- SmoothedClassifier.certify_dataset <- the user
        opened = open_log(log, meta, resume, stacklevel=4)
        try:
            check_identity(opened, selected, lambda i: _identity(dataset, i, certifier))
        except BaseException:
            opened.close()
            raise
        for row in opened.rows:
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
            labels: dict[int, tuple[int, str]] = {}

            def items() -> Iterator[tuple[int, torch.Tensor, int]]:
                for idx in todo:
                    image, label = dataset[idx]
                    label_ = _check_label(label, idx, certifier.num_classes)
                    labels[idx] = (label_, image_fingerprint(image, label_))
                    yield idx, image, derive_seed(master, idx)

            if policy is None:
                done_iter: Iterator[tuple[int, _Certificate]] = (
                    (idx, certifier.certify(image, n0_, n_, a, b, seed=s))
                    for idx, image, s in items()
                )
            else:
                done_iter = certifier.certify_many(items(), n0_, policy, b)
            for idx, cert in done_iter:
                label_, digest = labels.pop(idx)
                spent = cert.alpha_spent if policy is not None else None
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
                    alpha=a if spent is None else spent,
                    image_sha256=digest,
                )
                if opened is not None:
                    opened.append(row)
                results[idx] = row
                correct += row.correct
                bar.set_postfix(cert_acc=f"{correct / len(results):.3f}", refresh=False)
                bar.update(1)
    finally:
        bar.close()
        if opened is not None:
            opened.close()
    report = CertificationReport([results[i] for i in selected])
    if opened is not None:
        report.settings = meta
    elif policy is not None:  # what report.summary() needs to mark a target-mode result
        report.settings = {"mode": mode, "sequential": params}
    return report


def _identity(dataset: Any, idx: int, certifier: Certifier) -> str:
    image, label = dataset[idx]
    return image_fingerprint(image, _check_label(label, idx, certifier.num_classes))


def _dataset_info(dataset: Any, info: Mapping[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"size": len(dataset) if hasattr(dataset, "__len__") else None}
    for key, value in (info or {}).items():
        if not isinstance(key, str) or key == "size":
            raise ValueError(f"dataset_info keys must be strings other than 'size', got {key!r}")
        if value is not None and not isinstance(value, (str, int, float, bool)):
            raise ValueError(f"dataset_info[{key!r}] must be a number, string, bool or None")
        out[key] = value
    return out


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
