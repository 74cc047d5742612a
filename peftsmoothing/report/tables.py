"""Tables of certification reports: Cohen et al.'s approximate certified accuracy, and its
lower bound with a stated confidence (``peftsmoothing.report.confidence``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

from ..core.validation import check_choice, check_real

__all__ = [
    "DEFAULT_RADII",
    "Tabulated",
    "bound_table",
    "certified_accuracy_table",
    "check_radii",
]

DEFAULT_RADII: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
"""Radii of the certified-accuracy table when none are given."""

_FORMATS = ("markdown", "csv")


class Tabulated(Protocol):
    """What a table uses of a [`CertificationReport`][peftsmoothing.CertificationReport]."""

    @property
    def acr(self) -> float: ...

    @property
    def abstain_rate(self) -> float: ...

    def __len__(self) -> int: ...

    def certified_accuracy(self, radii: Iterable[float] | None = None) -> dict[float, float]: ...

    def certified_accuracy_bound(
        self,
        radii: Iterable[float] | None = None,
        confidence: float = 0.95,
        alpha: float | None = None,
    ) -> dict[float, float]: ...


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
    reports: Mapping[str, Tabulated],
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
    check_choice(format, "format", _FORMATS)
    values = check_radii(radii)
    if format == "csv":
        lines = [",".join(["name", *(repr(r) for r in values), "acr", "abstain_rate", "images"])]
        for name, report in reports.items():
            acc = report.certified_accuracy(values)
            cells = [_csv_cell(name), *(repr(acc[r]) for r in values)]
            cells += [repr(report.acr), repr(report.abstain_rate), str(len(report))]
            lines.append(",".join(cells))
        return "\n".join(lines)
    header = "| | " + " | ".join(f"r = {r!r}" for r in values) + " | ACR | abstain | images |"
    lines = [header, "|---|" + "---:|" * (len(values) + 3)]
    for name, report in reports.items():
        acc = report.certified_accuracy(values)
        cells = [f"{acc[r]:.3f}" for r in values]
        cells += [f"{report.acr:.3f}", f"{report.abstain_rate:.3f}", str(len(report))]
        lines.append(f"| {name.replace('|', '/')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _csv_cell(text: str) -> str:
    if any(c in text for c in ',"\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


def bound_table(
    reports: Mapping[str, Tabulated],
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
            bound = report.certified_accuracy_bound(values, confidence, alpha)
            cells = [f"{bound[r]:.3f}" for r in values]
        except ValueError as err:  # the run's alpha is unknown: say so in the row
            cells = [f"n/a ({err})"] + [""] * (len(values) - 1)
        lines.append(f"| {name.replace('|', '/')} | " + " | ".join(cells) + f" | {len(report)} |")
    return "\n".join(lines)
