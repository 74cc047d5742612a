"""Curves of certified accuracy against the radius (matplotlib, optional: ``[plot]`` extra).

Nothing here imports ``peftsmoothing.report.accuracy``: a curve is drawn from anything that has a
name, an ACR, certified radii and a [`curve`][peftsmoothing.CertificationReport.curve] method
(``Curve``), which a [`peftsmoothing.CertificationReport`][peftsmoothing.CertificationReport] is.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final, Protocol

import numpy as np

from ..core.files import atomic_write, clean_stale_temporaries

__all__ = ["PLOT_CREATOR", "Curve", "plot_certified_accuracy"]

PLOT_CREATOR: Final[str] = "peftsmoothing certified-accuracy plot"
"""Recorded in the metadata of every plot written here, so that ``peftsmoothing report
--plot`` recognises (and replaces) its own earlier plot and no other file."""

_CREATOR_KEYS: Final[dict[str, str]] = {
    "png": "Software", "pdf": "Creator", "svg": "Creator", "ps": "Creator", "eps": "Creator",
}  # fmt: skip
_MAX_PLOT_BYTES: Final[int] = 64 * 2**20  # a larger file is no plot of ours


class Curve(Protocol):
    """What a plot uses of a
    [`peftsmoothing.CertificationReport`][peftsmoothing.CertificationReport]."""

    name: str | None
    radius: np.ndarray
    pa_lower: np.ndarray

    @property
    def acr(self) -> float: ...

    def __len__(self) -> int: ...

    def curve(self, max_radius: float | None = None, points: int = 401) -> tuple[Any, Any]: ...


def default_max_radius(reports: Iterable[Curve]) -> float:
    """A little beyond the largest certified radius of ``reports`` (1.0 if there is none).

    Examples:
        >>> default_max_radius([])
        1.0
    """
    largest = max((float(np.max(r.radius)) for r in reports if len(r)), default=0.0)
    return largest * 1.05 if largest > 0 else 1.0


def plot_certified_accuracy(
    reports: Mapping[str, Curve] | Curve,
    path: str | os.PathLike[str],
    *,
    max_radius: float | None = None,
    title: str | None = None,
) -> Path:
    """Plot certified accuracy vs. radius of one or several reports on one figure, with the
    distribution of ``pa_lower`` below (for logs that record it).

    Needs matplotlib (``pip install peftsmoothing[plot]``); no display is used. The file is
    written atomically (a kill leaves the previous one whole) and, in PNG, PDF, SVG, PS and
    EPS, records ``PLOT_CREATOR`` in its metadata.

    Args:
        reports: ``{legend label: report}``, or a single report.
        path: Image file to write (format from the extension; none: PNG), replaced if it
            exists.
        max_radius: Right end of the x axis (default: a little beyond the largest radius).
        title: Figure title.

    Returns:
        The path written.

    Raises:
        ImportError: If matplotlib is not installed.
        ValueError: If there is nothing to plot.

    Examples:
        >>> import os, tempfile
        >>> from peftsmoothing import CertificationReport
        >>> from peftsmoothing.report.certlog import LogRow
        >>> a = CertificationReport([LogRow(0, 1, 1, 0.6, 1, 0.9, 9, 10, 1.0)])
        >>> b = CertificationReport([LogRow(0, 1, 1, 0.3, 1, 0.7, 7, 10, 1.0)])
        >>> out = plot_certified_accuracy({"sigma=0.5": a, "sigma=0.25": b},
        ...                               os.path.join(tempfile.mkdtemp(), "curves.png"))
        >>> out.suffix
        '.png'
    """
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(
            "plotting certified accuracy needs matplotlib: pip install 'peftsmoothing[plot]'"
        ) from err
    if not isinstance(reports, Mapping):  # a single report
        reports = {reports.name or "smoothed classifier": reports}
    if not reports or not any(len(r) for r in reports.values()):
        raise ValueError("nothing to plot: no report holds certificates")
    top = max_radius if max_radius is not None else default_max_radius(reports.values())
    bounds = {k: r.pa_lower[np.isfinite(r.pa_lower)] for k, r in reports.items() if len(r)}
    bounds = {k: v for k, v in bounds.items() if v.size}  # Cohen et al.'s logs have none
    fig = Figure(figsize=(6.0, 6.5 if bounds else 4.0), layout="constrained")
    ax, hist = fig.subplots(2, 1, height_ratios=(3, 2)) if bounds else (fig.add_subplot(), None)
    if hist is not None:
        for label, values in bounds.items():
            hist.hist(values, bins=40, range=(0.0, 1.0), histtype="step", label=label)
        hist.axvline(0.5, color="grey", linestyle=":", linewidth=1.0)  # below: abstain
        hist.set_xlabel("pa_lower (lower confidence bound of the top class's probability)")
        hist.set_ylabel("images")
        hist.set_xlim(0.0, 1.0)
    for label, report in reports.items():
        if len(report):
            radii, accuracy = report.curve(max_radius=top)
            ax.plot(radii, accuracy, label=f"{label} (ACR {report.acr:.3f})")
    ax.set_xlabel("radius (L2, pixel units of [0, 1] images)")
    ax.set_ylabel("certified accuracy")
    ax.set_xlim(0.0, top)
    ax.set_ylim(0.0, 1.0)
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    out = Path(path)
    fmt = out.suffix[1:].lower() or fig.canvas.get_default_filetype()
    key = _CREATOR_KEYS.get(fmt)
    metadata = {key: PLOT_CREATOR} if key else None
    clean_stale_temporaries(out.parent, [out.name])
    atomic_write(out, lambda f: fig.savefig(f, format=fmt, dpi=150, metadata=metadata))
    return out


def is_own_plot(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a plot ``plot_certified_accuracy`` wrote (PNG, PDF, SVG, PS, EPS:
    the formats that record ``PLOT_CREATOR``).

    Examples:
        >>> import pathlib, tempfile
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "photo.png"
        >>> _ = p.write_bytes(b"a user's photo")
        >>> is_own_plot(p)
        False
    """
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_PLOT_BYTES + 1)
    except OSError:
        return False
    return len(data) <= _MAX_PLOT_BYTES and PLOT_CREATOR.encode() in data
