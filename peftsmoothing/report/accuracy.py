"""Certification logs as numbers: certified accuracy, ACR, tables and curves.

A [`CertificationReport`][peftsmoothing.CertificationReport] reads the logs written by
[`SmoothedClassifier.certify_dataset`][peftsmoothing.SmoothedClassifier.certify_dataset] (or several
shard logs at once) and computes the *approximate certified accuracy* of Cohen et al. (2019) at a
radius ``r``: the fraction of images whose certified prediction is correct with a certified radius
of at least ``r``, plus the average certified radius (ACR), the abstain rate and the smoothed
classifier's clean accuracy.

Logs of format 2 and 1 and Cohen et al.'s are read, each row checked before it counts
(``peftsmoothing.report.certlog``); paired comparisons of two reports are
``peftsmoothing.report.paired`` and plots ``peftsmoothing.report.plots`` (both re-exported
here); the tables and the lower bound on certified accuracy are ``report.tables`` and
``report.confidence``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..core.stats import ABSTAIN
from .certlog import (
    LogRow,
    check_same_settings,
    parse_log,
    read_log,
    read_settings,
    validate_rows,
)
from .confidence import certified_accuracy_bound
from .paired import PairedDifference, paired_difference
from .plots import default_max_radius, plot_certified_accuracy
from .tables import DEFAULT_RADII, certified_accuracy_table, check_radii

__all__ = [
    "DEFAULT_RADII",
    "CertificationReport",
    "PairedDifference",
    "certified_accuracy_table",
    "plot_certified_accuracy",
    "validate_rows",
]

class CertificationReport:
    """Certified accuracy, ACR, abstain rate and clean accuracy of a set of certificates.

    Build one with ``from_log`` / ``from_logs``, or get it from
    [`SmoothedClassifier.certify_dataset`][peftsmoothing.SmoothedClassifier.certify_dataset]. Rows
    with the same image index are kept once (the first one seen).

    Args:
        rows: Log rows (``peftsmoothing.certify.smoothing.LogRow``).
        name: Label used in tables and plots.

    Attributes:
        idx, label, predict, radius, correct, pa_lower, count, n, seconds: The log's columns as
            numpy arrays, in row order.

    Examples:
        >>> from peftsmoothing.report.certlog import LogRow
        >>> rows = [LogRow(0, 1, 1, 0.8, 1, 0.9, 95, 100, 1.0),
        ...         LogRow(1, 2, 2, 0.2, 1, 0.6, 65, 100, 1.0),
        ...         LogRow(2, 0, -1, 0.0, 0, 0.4, 45, 100, 1.0),
        ...         LogRow(3, 0, 5, 0.5, 0, 0.8, 90, 100, 1.0)]
        >>> report = CertificationReport(rows)
        >>> report.certified_accuracy([0.0, 0.5, 1.0])
        {0.0: 0.5, 0.5: 0.25, 1.0: 0.0}
        >>> report.acr, report.abstain_rate
        (0.25, 0.25)
    """

    def __init__(self, rows: Iterable[LogRow], name: str | None = None) -> None:
        unique: dict[int, LogRow] = {}
        conflicts = 0
        for row in rows:
            first = unique.setdefault(row.idx, row)
            if first is not row and first.certificate() != row.certificate():
                conflicts += 1
        if conflicts:
            warnings.warn(
                f"{conflicts} image(s) appear more than once with different certificates; the "
                "first one seen is kept (never the better one, which would bias the result)",
                stacklevel=2,
            )
        kept = list(unique.values())
        self.name = name
        self.settings: dict[str, Any] | None = None  # of the one log it was read from
        self.rows: tuple[LogRow, ...] = tuple(kept)
        self.idx = np.array([r.idx for r in kept], dtype=np.int64)
        self.label = np.array([r.label for r in kept], dtype=np.int64)
        self.predict = np.array([r.predict for r in kept], dtype=np.int64)
        self.radius = np.array([r.radius for r in kept], dtype=np.float64)
        self.correct = np.array([r.correct for r in kept], dtype=bool)
        self.pa_lower = np.array([r.pa_lower for r in kept], dtype=np.float64)
        self.count = np.array([r.count for r in kept], dtype=np.int64)
        self.n = np.array([r.n for r in kept], dtype=np.int64)
        self.seconds = np.array([r.seconds for r in kept], dtype=np.float64)

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        name = f"{self.name!r}, " if self.name else ""
        return f"CertificationReport({name}{len(self)} images)"

    # ------------------------------------------------------------------------ reading
    @classmethod
    def from_log(
        cls, path: str | os.PathLike[str], name: str | None = None, *, validate: bool = True
    ) -> CertificationReport:
        """Read a log of ``certify_dataset`` or Cohen et al.'s ``certify.py`` (torn line: warned).

        Args:
            path: The tab-separated log.
            name: Label for tables and plots (default: the file name without extension).
            validate: Refuse impossible rows (``validate_rows``, with sigma from the
                log's settings file when it has one).

        Returns:
            The report.

        Raises:
            FileNotFoundError: If ``path`` does not exist.
            ValueError: If the file is not a certification log, is not a regular file (a
                link to a device, a FIFO) or larger than 2 GiB (``certlog.MAX_LOG_BYTES``), is
                corrupted, or holds an impossible row.

        Examples:
            >>> import os, tempfile
            >>> from peftsmoothing.report.certlog import LOG_COLUMNS_V1
            >>> path = os.path.join(tempfile.mkdtemp(), "certify.tsv")
            >>> with open(path, "w") as f:
            ...     _ = f.write("\\t".join(LOG_COLUMNS_V1) + "\\n")
            ...     _ = f.write("0\\t3\\t3\\t0.5\\t1\\t0.84\\t99\\t100\\t2.0\\n")
            >>> report = CertificationReport.from_log(path)
            >>> report.name, len(report), report.acr
            ('certify', 1, 0.5)
        """
        p = Path(path)
        data = read_log(p)
        rows, valid = parse_log(data, str(p))
        if valid < len(data):
            warnings.warn(
                f"{p}: ignoring a torn last line ({len(data) - valid} bytes; the run was "
                "interrupted or is still going)",
                stacklevel=2,
            )
        settings = read_settings(p)
        if validate:
            validate_rows(rows, str(p), settings=settings)
        report = cls(rows, name=p.stem if name is None else name)
        report.settings = settings
        return report

    @classmethod
    def from_logs(
        cls,
        paths: Sequence[str | os.PathLike[str]],
        name: str | None = None,
        *,
        allow_mixed: bool = False,
        validate: bool = True,
    ) -> CertificationReport:
        """Merge several logs (e.g. the shards of one run) into one report, one row per image.

        Args:
            paths: Log files.
            name: Label for tables and plots (default: the first file's name).
            allow_mixed: Merge logs whose settings files differ (or of which only some have
                one); refused by default (``peftsmoothing.report.certlog.check_same_settings``).
            validate: Check every row (see ``from_log``).

        Returns:
            The merged report.

        Raises:
            ValueError: If ``paths`` is empty, a file is not a certification log, or the logs'
                settings differ and ``allow_mixed`` is false.

        Examples:
            >>> import os, tempfile
            >>> from peftsmoothing.report.certlog import LOG_COLUMNS_V1 as LOG_COLUMNS
            >>> folder = tempfile.mkdtemp()
            >>> for shard, line in enumerate(["0\\t1\\t1\\t0.5\\t1\\t0.8\\t9\\t10\\t1.0",
            ...                               "1\\t2\\t-1\\t0.0\\t0\\t0.3\\t5\\t10\\t1.0"]):
            ...     with open(os.path.join(folder, f"shard{shard}.tsv"), "w") as f:
            ...         _ = f.write("\\t".join(LOG_COLUMNS) + "\\n" + line + "\\n")
            >>> paths = [os.path.join(folder, f"shard{i}.tsv") for i in range(2)]
            >>> report = CertificationReport.from_logs(paths)
            >>> len(report), report.abstain_rate
            (2, 0.5)
        """
        if isinstance(paths, (str, os.PathLike)) or not list(paths):
            raise ValueError("from_logs expects a non-empty list of log paths")
        reports = [cls.from_log(path, validate=validate) for path in paths]
        if not allow_mixed:
            check_same_settings([(str(p), r.settings) for p, r in zip(paths, reports, strict=True)])
        rows = [row for report in reports for row in report.rows]
        merged = cls(rows, name=Path(paths[0]).stem if name is None else name)
        if len(reports) == 1 or not allow_mixed:  # the same settings (checked above)
            merged.settings = reports[0].settings
        return merged

    # ------------------------------------------------------------------------ numbers
    def _require_rows(self) -> None:
        if not len(self):
            raise ValueError("the report holds no certificates")

    def _certified(self, radius: float) -> np.ndarray:
        """Per image: certified correct with a radius of at least ``radius``."""
        return self.correct & (self.radius >= radius)

    def certified_accuracy(self, radii: Iterable[float] | None = None) -> dict[float, float]:
        """Approximate certified accuracy at each radius (Cohen et al. 2019).

        The fraction of images whose certified prediction is correct with a certified radius
        ``>= r``. At ``r = 0`` this is the smoothed classifier's clean accuracy (abstentions
        count as errors).

        Args:
            radii: Radii (>= 0); default ``DEFAULT_RADII``.

        Returns:
            ``{radius: fraction}`` in the order given.

        Raises:
            ValueError: For a negative or non-finite radius, or an empty report.

        Examples:
            >>> from peftsmoothing.report.certlog import LogRow
            >>> rows = [LogRow(0, 1, 1, 0.3, 1, 0.7, 80, 100, 1.0),
            ...         LogRow(1, 1, 0, 0.9, 0, 0.9, 99, 100, 1.0)]
            >>> CertificationReport(rows).certified_accuracy([0, 0.3, 0.31])
            {0.0: 0.5, 0.3: 0.5, 0.31: 0.0}
        """
        values = check_radii(radii)
        self._require_rows()
        return {r: float(np.mean(self._certified(r))) for r in values}

    def certified_accuracy_bound(
        self,
        radii: Iterable[float] | None = None,
        confidence: float = 0.95,
        alpha: float | None = None,
    ) -> dict[float, float]:
        """Lower bound on the smoothed classifier's certified accuracy, holding at all radii at
        once with probability ``>= confidence`` (Cohen et al. 2019; fixed-``n`` and sequential
        runs alike: ``peftsmoothing.report.confidence``).

        Args:
            radii: Radii (>= 0); default ``DEFAULT_RADII``.
            confidence: Probability that the bound holds.
            alpha: The run's alpha; default: from the log's settings file.

        Returns:
            ``{radius: lower bound}``.

        Raises:
            ValueError: For an empty report, invalid radii, or an unknown alpha.

        Examples:
            >>> from peftsmoothing.report.certlog import LogRow
            >>> rows = [LogRow(i, 0, 0, 0.5, 1, 0.9, 95, 100, 1.0) for i in range(100)]
            >>> CertificationReport(rows).certified_accuracy_bound([0.0, 0.6], alpha=0.01)
            {0.0: 0.97, 0.6: 0.0}
        """
        return certified_accuracy_bound(self, check_radii(radii), confidence, alpha)

    @property
    def acr(self) -> float:
        """Average certified radius: mean over images of the radius if correct, else 0."""
        self._require_rows()
        return float(np.mean(np.where(self.correct, self.radius, 0.0)))

    @property
    def abstain_rate(self) -> float:
        """Fraction of images on which the smoothed classifier abstained."""
        self._require_rows()
        return float(np.mean(self.predict == ABSTAIN))

    @property
    def clean_accuracy(self) -> float:
        """Accuracy of the smoothed classifier's certified predictions (abstain = wrong)."""
        self._require_rows()
        return float(np.mean(self.correct))

    def compare_to(
        self, other: CertificationReport, radii: Iterable[float] | None = None
    ) -> dict[float, PairedDifference]:
        """Paired comparison with another report on the same images, at each radius.

        Two methods certified on the same test images are compared image by image, which is far
        more precise than comparing two accuracies: see
        [`PairedDifference`][peftsmoothing.PairedDifference]. Only images both reports hold (by
        index) are used.

        Args:
            other: The report to compare with (e.g. a baseline's).
            radii: Radii (>= 0); default ``DEFAULT_RADII``.

        Returns:
            ``{radius: PairedDifference}`` in the order given.

        Raises:
            ValueError: If the reports share no image, if a shared image has different labels
                in the two (they were made on different data), or for invalid radii.

        Examples:
            >>> from peftsmoothing.report.certlog import LogRow
            >>> def report(correct):
            ...     return CertificationReport(
            ...         [LogRow(i, 0, 0 if c else 1, 0.5, int(c), 0.9, 90, 100, 1.0)
            ...          for i, c in enumerate(correct)])
            >>> a, b = report([1] * 10 + [0] * 10), report([0] * 20)
            >>> d = a.compare_to(b, [0.0])[0.0]
            >>> d.difference, d.better, d.worse, round(d.p_value, 6)  # 2 * 0.5 ** 10
            (0.5, 10, 0, 0.001953)
        """
        values = check_radii(radii)
        self._require_rows()
        other._require_rows()
        shared, mine, theirs = np.intersect1d(self.idx, other.idx, return_indices=True)
        if not len(shared):
            raise ValueError("the two reports share no image (compare reports of the same data)")
        if np.any(self.label[mine] != other.label[theirs]):
            raise ValueError(
                "shared image indices have different labels: the reports were made on "
                "different data"
            )
        return {
            r: paired_difference(self._certified(r)[mine], other._certified(r)[theirs], r)
            for r in values
        }

    def summary(self, radii: Iterable[float] | None = None) -> str:
        """A few human-readable lines: images, clean accuracy, ACR, abstain rate, table.

        Examples:
            >>> from peftsmoothing.report.certlog import LogRow
            >>> report = CertificationReport([LogRow(0, 1, 1, 0.3, 1, 0.7, 80, 100, 1.0)])
            >>> print(report.summary([0.0]).splitlines()[0])
            images: 1   clean accuracy: 1.000   ACR: 0.300   abstain rate: 0.000
        """
        head = (
            f"images: {len(self)}   clean accuracy: {self.clean_accuracy:.3f}   "
            f"ACR: {self.acr:.3f}   abstain rate: {self.abstain_rate:.3f}"
        )
        name = self.name or "certified accuracy"
        settings = self.settings or {}
        if settings.get("mode") == "target":
            r = (settings.get("sequential") or {}).get("radius")
            head += (
                f"\ntarget mode (r = {r}): only certified accuracy at r = {r} is meaningful; "
                "sampling stopped once each image's radius was decided against r, so the "
                "other radii, ACR and the table's other columns understate the model"
            )
        return head + "\n\n" + certified_accuracy_table({name: self}, radii)

    def table(self, radii: Iterable[float] | None = None, format: str = "markdown") -> str:
        """The certified-accuracy table (one row) as markdown or CSV.

        Args:
            radii: Columns; default ``DEFAULT_RADII``.
            format: ``"markdown"`` or ``"csv"``.

        Returns:
            The table text.

        Examples:
            >>> from peftsmoothing.report.certlog import LogRow
            >>> report = CertificationReport([LogRow(0, 1, 1, 0.3, 1, 0.7, 80, 100, 1.0)],
            ...                              name="lora")
            >>> print(report.table([0.0, 0.5], format="csv"))
            name,0.0,0.5,acr,abstain_rate,images
            lora,1.0,0.0,0.3,0.0,1
        """
        return certified_accuracy_table({self.name or "": self}, radii, format=format)

    def curve(self, max_radius: float | None = None, points: int = 401) -> tuple[Any, Any]:
        """Certified accuracy as a function of the radius, on a grid from 0 to ``max_radius``.

        Returns:
            ``(radii, accuracies)`` as numpy arrays.

        Examples:
            >>> from peftsmoothing.report.certlog import LogRow
            >>> report = CertificationReport([LogRow(0, 1, 1, 0.5, 1, 0.8, 9, 10, 1.0)])
            >>> r, acc = report.curve(max_radius=1.0, points=3)
            >>> r.tolist(), acc.tolist()
            ([0.0, 0.5, 1.0], [1.0, 1.0, 0.0])
        """
        self._require_rows()
        top = max_radius if max_radius is not None else default_max_radius([self])
        grid = np.linspace(0.0, float(top), int(points))
        good = np.sort(self.radius[self.correct])
        # number of correct certificates with radius >= r, for every r in the grid
        at_least = good.size - np.searchsorted(good, grid, side="left")
        return grid, at_least / len(self)

    def plot(
        self,
        path: str | os.PathLike[str],
        *,
        max_radius: float | None = None,
        title: str | None = None,
    ) -> Path:
        """Save a plot of certified accuracy vs. radius (needs ``pip install peftsmoothing[plot]``).

        Args:
            path: Image file to write (format from the extension, e.g. ``.png``, ``.pdf``).
            max_radius: Right end of the x axis (default: a little beyond the largest radius).
            title: Figure title.

        Returns:
            The path written.

        Raises:
            ImportError: If matplotlib is not installed.

        Examples:
            >>> import os, tempfile
            >>> from peftsmoothing.report.certlog import LogRow
            >>> report = CertificationReport([LogRow(0, 1, 1, 0.5, 1, 0.8, 9, 10, 1.0)])
            >>> out = report.plot(os.path.join(tempfile.mkdtemp(), "curve.png"))
            >>> out.stat().st_size > 0
            True
        """
        return plot_certified_accuracy(self, path, max_radius=max_radius, title=title)
