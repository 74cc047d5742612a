"""Randomized smoothing: ``SmoothedClassifier.predict / certify`` and the
[`Certificate`][peftsmoothing.Certificate].

PREDICT and CERTIFY are exactly the algorithms of Cohen, Rosenfeld & Kolter (2019). The smoothed
classifier ``g(x) = argmax_c P(f(x + d) = c)``, ``d ~ N(0, sigma^2 I)``, is evaluated with noise in
pixel space: the base model ``f`` takes images in [0, 1] and normalizes them itself
(docs/design.md, invariant 1), so ``sigma`` and the certified L2 radius are in the same units.
With probability at least ``1 - alpha`` over the noise, a non-abstaining certificate's prediction
is the smoothed classifier's on every point within ``radius`` (L2) of ``x``.

``SmoothedClassifier`` is the facade: sampling is ``sampling.NoiseSampler`` (noise and counts
on the device), every CERTIFY mode runs on the one engine ``engine.certify_packed`` (fixed
``n`` is the one-look policy), datasets are ``runner`` and logs ``report.certlog`` (whose
names stay importable from here).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..core.fingerprint import model_fingerprint as model_fingerprint
from ..core.stats import ABSTAIN, predict_from_counts
from ..core.validation import check_alpha, check_choice, check_int, check_positive_int
from ..report.certlog import LOG_COLUMNS, LOG_FORMATS, LogRow, log_settings, parse_log
from . import runner
from .engine import Certificate, certify_packed, chunk_sizes
from .sampling import STREAM_PREDICTION, Chunk, NoiseSampler, resolve_seed
from .sequential import Schedule, SequentialPolicy, fixed_policy, policy_settings, sequential_policy

if TYPE_CHECKING:
    from ..report.accuracy import CertificationReport

__all__ = ["ABSTAIN", "LOG_COLUMNS", "Certificate", "LogRow", "SmoothedClassifier", "parse_log"]


class SmoothedClassifier:
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
        #: The ``peftsmoothing.certify.sampling.NoiseSampler`` that draws and counts the noise.
        self.sampler = NoiseSampler(
            base, num_classes, sigma, device=device, precision=precision, merge=merge,
            channels_last=channels_last,
        )  # fmt: skip

    def __repr__(self) -> str:
        return (
            f"SmoothedClassifier({type(self.base).__name__}, num_classes={self.num_classes}, "
            f"sigma={self.sigma}, precision={self.precision!r})"
        )

    @property
    def base(self) -> nn.Module:
        """The base classifier."""
        return self.sampler.base

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return self.sampler.num_classes

    @property
    def sigma(self) -> float:
        """Noise standard deviation, in pixel units of [0, 1] images."""
        return self.sampler.sigma

    @property
    def precision(self) -> str:
        """``"fp32"``, ``"bf16"`` or ``"fp16"``."""
        return self.sampler.precision

    @property
    def device(self) -> torch.device:
        """The device the model runs on (where noise is drawn and counts accumulate)."""
        return self.sampler.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the model's floating-point parameters (``float32`` if it has none)."""
        return self.sampler.dtype

    # ------------------------------------------------------------------------ public API
    def vote_counts(
        self,
        x: torch.Tensor,
        n: int = 1000,
        batch_size: int = 1000,
        seed: int | None = None,
    ) -> torch.Tensor:
        """How often the base model predicts each class on ``n`` noisy copies of ``x``.

        These are the counts behind
        [`SmoothedClassifier.predict`][peftsmoothing.SmoothedClassifier.predict]: the same
        noise stream, so ``predict_from_counts(vote_counts(x, n, b, seed), alpha)`` is
        ``predict(x, n, alpha, b, seed)``.

        Args:
            x: One image (C, H, W) in [0, 1].
            n: Number of noise samples.
            batch_size: Noisy images per forward pass.
            seed: Seed of the noise; ``None`` draws one from torch's global generator.

        Returns:
            An int64 CPU tensor of shape ``(num_classes,)`` summing to ``n``.

        Raises:
            ValueError: For invalid arguments or inputs (see ``predict``).
            FloatingPointError: If the model returns a non-finite logit on any sample.

        Examples:
            >>> smoothed = SmoothedClassifier(nn.Sequential(nn.Flatten(), nn.Linear(16, 2)), 2, 0.5)
            >>> smoothed.vote_counts(torch.rand(1, 4, 4), n=50, seed=0).sum().item()
            50
        """
        n = check_positive_int(n, "n")
        batch_size = check_positive_int(batch_size, "batch_size")
        sampler = self.sampler
        gen = sampler.generator(resolve_seed(seed), STREAM_PREDICTION)
        x_dev = sampler.prepare(x)
        with sampler.inference():
            rows = [sampler.count([Chunk(x_dev, size, gen)]) for size in chunk_sizes(n, batch_size)]
            host = torch.cat(rows).sum(dim=0).cpu()  # the one host synchronisation
        return sampler.class_counts(host)

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
            >>> smoothed = SmoothedClassifier(nn.Sequential(nn.Flatten(), nn.Linear(16, 2)), 2, 0.5)
            >>> smoothed.predict(torch.rand(1, 4, 4), n=50, seed=0) in (ABSTAIN, 0, 1)
            True
        """
        check_alpha(alpha)  # refused before any sample is drawn
        return predict_from_counts(self.vote_counts(x, n, batch_size, seed), alpha)

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
            early_stop: Early-stopping mode (``peftsmoothing.certify.sequential.MaxRadiusPolicy``).
            max_radius: Early stopping: stop once this radius is certified.
            tolerance: Early stopping: stop when the projected gain at ``n`` is below this.
            schedule: The looks and their alphas (a ``peftsmoothing.certify.sequential.Schedule``
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
            >>> class Constant(nn.Module):  # always class 1
            ...     def forward(self, x):
            ...         return torch.tensor([0.0, 1.0]).repeat(len(x), 1)
            >>> smoothed = SmoothedClassifier(Constant(), 2, sigma=0.5)
            >>> cert = smoothed.certify(torch.rand(1, 4, 4), n0=10, n=100, alpha=0.001)
            >>> cert.prediction, cert.count, round(cert.radius, 4)  # 0.5 * Phi^-1(0.001 ** 0.01)
            (1, 100, 0.7502)
            >>> cert = smoothed.certify(torch.rand(1, 4, 4), n=100_000, radius=0.5, seed=0)
            >>> cert.radius >= 0.5, cert.n, cert.reason  # target mode: certified at the first look
            (True, 256, 'certified')
        """
        n = check_positive_int(n, "n")  # n0 and batch_size: checked by certify_many
        alpha = check_alpha(alpha)
        policy = sequential_policy(
            self.sigma, n, alpha, radius=radius, early_stop=early_stop, max_radius=max_radius,
            tolerance=tolerance, schedule=schedule,
        )  # fmt: skip
        item = (0, x, resolve_seed(seed))
        with self.sampler.inference():  # one session for all the steps of the engine
            ((_, cert),) = self.certify_many(
                [item], n0, policy or fixed_policy(self.sigma, n, alpha), batch_size
            )
        return cert if policy else replace(cert, reason=None)

    def certify_many(
        self,
        items: Iterable[tuple[Any, torch.Tensor, int]],
        n0: int,
        policy: SequentialPolicy,
        batch_size: int = 1000,
    ) -> Iterator[tuple[Any, Certificate]]:
        """Sequential CERTIFY of many images, their samples packed into shared batches.

        The engine under ``certify`` and ``certify_dataset``
        (``peftsmoothing.certify.engine.certify_packed``, which says what packing keeps: each
        image's own noise streams, batches of one shape). Eval mode, merged weights and
        inference mode hold only while the engine computes (``items`` is read then), never
        while the caller's loop body runs, and are restored if the caller stops early.

        Args:
            items: ``(key, image (C, H, W) in [0, 1], seed)`` per image, read lazily.
            n0: Selection samples per image.
            policy: A ``peftsmoothing.certify.sequential.TargetRadiusPolicy`` or
                ``peftsmoothing.certify.sequential.MaxRadiusPolicy`` with this ``sigma``.
            batch_size: Most noisy images per forward pass.

        Yields:
            ``(key, Certificate)`` per image, in the order the images finish.

        Raises:
            ValueError: If the policy's sigma is not this classifier's.
            FloatingPointError: If the model returns a non-finite logit.

        Examples:
            >>> from peftsmoothing.certify.sequential import Schedule, MaxRadiusPolicy
            >>> smoothed = SmoothedClassifier(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)), 3, 0.5)
            >>> policy = MaxRadiusPolicy(0.5, Schedule.create(2000, 0.001))
            >>> items = [(i, torch.rand(3, 2, 2), i) for i in range(4)]
            >>> sorted(key for key, cert in smoothed.certify_many(items, 50, policy, 500))
            [0, 1, 2, 3]
        """
        n0 = check_positive_int(n0, "n0")
        batch_size = check_positive_int(batch_size, "batch_size")
        if getattr(policy, "sigma", self.sigma) != self.sigma:
            raise ValueError(
                f"the policy is for sigma={getattr(policy, 'sigma', None)}, this classifier "
                f"smooths with sigma={self.sigma}"
            )
        return certify_packed(self.sampler, items, n0, policy, batch_size)

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

        Image ``i`` is certified with a seed derived from ``(seed, i)``, so its certificate
        does not depend on which images were certified before it, on ``skip``, on sharding
        or on resuming. Each log row is flushed and fsynced; with ``resume=True`` images
        already in the log are skipped, and a torn last line (process killed mid-write) is
        truncated and that image certified again, so no row is ever lost or duplicated. With
        ``radius=`` (target mode) or ``early_stop=True`` the images are certified
        sequentially, several in flight, their samples sharing each forward batch
        (``certify_many``).

        Args:
            dataset: Map-style dataset of ``(image (C, H, W) in [0, 1], int label)`` pairs.
            n0: Number of selection samples per image.
            n: Number of estimation samples per image.
            alpha: Failure probability of each certificate.
            batch_size: Noisy images per forward pass.
            log: Tab-separated log to write, one header line and one row per image, plus the
                settings file ``<log>.json`` next to the log's resolved path; ``None``: no log.
                While certifying, the process holds a lock on the log file itself.
            resume: Continue an existing log. Resuming is refused for a log written with
                other settings (sigma, n0, n, alpha, seed, precision, model, columns, dataset
                info), for a log with rows but no settings file, and (format 2) when an image
                already logged is not the same image and label any more (each row's
                ``image_sha256``). A format-1 log (release 0.1) resumes in format 1, with a
                warning that its data identity cannot be checked. If ``False`` an existing
                log is an error.
            indices: Dataset indices to consider (default: all).
            skip: Certify every ``skip``-th of those indices (Cohen et al. use 20 on CIFAR-10).
            shard: ``(i, k)``: certify only the ``i``-th of ``k`` disjoint, interleaved slices
                of the selected indices (one per process or GPU; merge logs with
                [`CertificationReport.from_logs`][peftsmoothing.CertificationReport.from_logs]).
            seed: Master seed of the per-image seeds.
            progress: Show a progress bar (images/s, running certified accuracy); default:
                when stderr is a terminal.
            log_format: ``"peftsmoothing"`` (format 2, ``peftsmoothing.report.certlog.LOG_COLUMNS``)
                or ``"cohen"``: Cohen et al.'s six columns (``idx label predict radius correct
                time``, ``time`` as ``str(datetime.timedelta)``), readable by their analysis
                code. A Cohen-format log has our settings file beside it, so resuming is still
                checked against the settings, but its rows carry no data identity, so resuming
                it on other data cannot be detected.
            dataset_info: What identifies the data beyond its size (e.g. ``{"name": "cifar10",
                "split": "test", "image_size": 32}``), recorded in the settings' ``"dataset"``;
                values must be JSON numbers, strings, booleans or ``None``.
            radius: Target mode, as in ``certify`` (``n`` is then ``n_max``); only certified
                accuracy at ``radius`` is meaningful in such a log.
            early_stop: Early-stopping mode, as in ``certify``.
            max_radius: Early stopping: stop once this radius is certified.
            tolerance: Early stopping: stop when the projected gain is below this. In the
                sequential modes each row records the samples drawn (``n``) and the alpha of
                the look it stopped at (``alpha``).

        Returns:
            A [`CertificationReport`][peftsmoothing.CertificationReport] over the selected
            images (this shard's), including those already in the log.

        Raises:
            ValueError: For invalid arguments, a log written with other settings or on other
                data, a corrupted log, or a label outside ``[0, num_classes)``.
            FileExistsError: If ``log`` exists and ``resume=False``.
            RuntimeError: If another process is certifying into ``log``.

        Examples:
            >>> data = [(torch.rand(3, 4, 4), i % 2) for i in range(4)]
            >>> smoothed = SmoothedClassifier(nn.Sequential(nn.Flatten(), nn.Linear(48, 2)), 2, 0.5)
            >>> report = smoothed.certify_dataset(data, n0=10, n=50, batch_size=50, skip=2)
            >>> len(report), report.idx.tolist()
            (2, [0, 2])
        """
        n0 = check_positive_int(n0, "n0")
        n = check_positive_int(n, "n")
        alpha = check_alpha(alpha)
        batch_size = check_positive_int(batch_size, "batch_size")
        skip = check_positive_int(skip, "skip")
        master = check_int(seed, "seed", minimum=0)
        columns = check_choice(log_format, "log_format", LOG_FORMATS)
        selected = runner.select_indices(dataset, indices, skip, shard)
        info = runner.dataset_info(dataset, dataset_info)
        policy = sequential_policy(
            self.sigma, n, alpha, radius=radius, early_stop=early_stop, max_radius=max_radius,
            tolerance=tolerance,
        )  # fmt: skip
        mode, params = ("fixed", None) if policy is None else policy_settings(policy)
        settings: dict[str, Any] = {"mode": mode, "sequential": params, "alpha": alpha}
        if log is not None:
            settings = log_settings(
                sigma=self.sigma, n0=n0, n=n, alpha=alpha, seed=master,
                num_classes=self.num_classes, precision=self.precision,
                model_sha256=model_fingerprint(self.base), columns=columns, dataset=info,
                mode=mode, sequential=params,
            )  # fmt: skip
        run = runner.DatasetRun(
            indices=selected, seed=master, n0=n0, batch_size=batch_size,
            policy=policy or fixed_policy(self.sigma, n, alpha), settings=settings, log=log,
            resume=resume, progress=progress,
        )  # fmt: skip
        # stacklevel 3: the log's warnings point at the user's call of this method
        return runner.certify_dataset(self.sampler, dataset, run, stacklevel=3)
