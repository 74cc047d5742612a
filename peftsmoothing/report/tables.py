"""Tables of certification reports: Cohen et al.'s approximate certified accuracy, and its
lower bound with a stated confidence (``peftsmoothing.report.confidence``); the table of
paired differences is ``peftsmoothing.report.paired.paired_table``."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from typing import Any

from ..core.validation import check_choice, check_real
from .confidence import Certified, certified_accuracy_bound

__all__ = ["DEFAULT_RADII", "bound_table", "certified_accuracy_table", "check_radii"]

DEFAULT_RADII: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
"""Radii of the certified-accuracy table when none are given."""


def check_radii(radii: Iterable[float] | None) -> list[float]:
    """The radii of a table, checked (``None``: ``DEFAULT_RADII``).

    Raises:
        ValueError: For a negative or non-finite radius, or no radius at all.

    Examples:
        >>> check_radii(None)
        [0.0, 0.25, 0.5, 0.75, 1.0]
    """
    out = [check_real(r, "radii", low=0.0) for r in (DEFAULT_RADII if radii is None else radii)]
    if not out:
        raise ValueError("radii must not be empty")
    return out


def certified_accuracy_table(
    reports: Mapping[str, Certified],
    radii: Iterable[float] | None = None,
    format: str = "markdown",
) -> str:
    """Cohen et al.'s approximate certified-accuracy table, one row per report.

    Columns: the certified accuracy at each radius, then ACR, abstain rate and number of images.

    Args:
        reports: ``{row name: report}``.
        radii: Columns; default ``DEFAULT_RADII``.
        format: ``"markdown"`` or ``"csv"``.

    Returns:
        The table text (no trailing newline).

    Raises:
        ValueError: For an unknown format, invalid radii, or an empty report.

    Examples:
        >>> from peftsmoothing import CertificationReport
        >>> from peftsmoothing.report.certlog import LogRow
        >>> a = CertificationReport([LogRow(0, 1, 1, 0.6, 1, 0.9, 9, 10, 1.0)])
        >>> b = CertificationReport([LogRow(0, 1, -1, 0.0, 0, 0.4, 4, 10, 1.0)])
        >>> print(certified_accuracy_table({"lora": a, "prompt": b}, [0.0, 0.5]))
        | | r = 0.0 | r = 0.5 | ACR | abstain | images |
        |---|---:|---:|---:|---:|---:|
        | lora | 1.000 | 1.000 | 0.600 | 0.000 | 1 |
        | prompt | 0.000 | 0.000 | 0.000 | 1.000 | 1 |
    """
    check_choice(format, "format", ("markdown", "csv"))
    values = check_radii(radii)
    rows: list[list[Any]] = []  # name, accuracy at each radius, ACR, abstain rate, images
    for name, report in reports.items():
        acc = report.certified_accuracy(values)
        rows.append([name, *(acc[r] for r in values), report.acr, report.abstain_rate, len(report)])
    if format == "csv":  # the csv module writes floats as repr: they round-trip
        text = io.StringIO()
        header = ["name", *values, "acr", "abstain_rate", "images"]
        csv.writer(text, lineterminator="\n").writerows([header, *rows])
        return text.getvalue().removesuffix("\n")
    lines = ["| | " + " | ".join(f"r = {r!r}" for r in values) + " | ACR | abstain | images |"]
    lines.append("|---|" + "---:|" * (len(values) + 3))
    for name, *numbers, images in rows:
        cells = [f"{v:.3f}" for v in numbers] + [str(images)]
        lines.append(f"| {name.replace('|', '/')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bound_table(
    reports: Mapping[str, Certified],
    radii: Iterable[float] | None = None,
    confidence: float = 0.95,
    alpha: float | None = None,
) -> str:
    """Markdown table of ``certified_accuracy_bound``, one row per report (``n/a`` and why
    for a report whose run's alpha the logs do not record).

    Args:
        reports: ``{row name: report}``.
        radii: Columns; default ``DEFAULT_RADII``.
        confidence: Probability with which each row's bound holds (at all its radii at once).
        alpha: The runs' alpha; default: from each log's settings file.

    Returns:
        The table text (no trailing newline).

    Examples:
        >>> from peftsmoothing import CertificationReport
        >>> from peftsmoothing.report.certlog import LogRow
        >>> rows = [LogRow(i, 0, 0, 0.5, 1, 0.9, 95, 100, 1.0) for i in range(100)]
        >>> print(bound_table({"lora": CertificationReport(rows)}, [0.0, 0.5], alpha=0.01))
        | >= with prob. 0.95 | r = 0.0 | r = 0.5 | images |
        |---|---:|---:|---:|
        | lora | 0.970 | 0.970 | 100 |
    """
    values = check_radii(radii)
    header = f"| >= with prob. {confidence:g} | " + " | ".join(f"r = {r!r}" for r in values)
    lines = [header + " | images |", "|---|" + "---:|" * (len(values) + 1)]
    for name, report in reports.items():
        try:
            bound = certified_accuracy_bound(report, values, confidence, alpha)
            cells = [f"{bound[r]:.3f}" for r in values]
        except ValueError as err:  # the run's alpha is unknown: say so in the row
            cells = [f"n/a ({err})"] + [""] * (len(values) - 1)
        lines.append(f"| {name.replace('|', '/')} | " + " | ".join(cells) + f" | {len(report)} |")
    return "\n".join(lines)
