"""Curves of certified accuracy against the radius (matplotlib, optional: ``[plot]`` extra).

Nothing here imports ``peftsmoothing.report.accuracy``: a curve is drawn from anything that has a
name, an ACR, certified radii and a [`curve`][peftsmoothing.CertificationReport.curve] method
(``report.confidence.Certified``), which a
[`peftsmoothing.CertificationReport`][peftsmoothing.CertificationReport] is.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Final

import numpy as np

from ..core.files import atomic_write, clean_stale_temporaries
from .confidence import Certified

__all__ = ["PLOT_CREATOR", "plot_certified_accuracy"]

PLOT_CREATOR: Final[str] = "peftsmoothing certified-accuracy plot"
"""Recorded in the metadata of every plot written here, so that ``peftsmoothing report
--plot`` recognises (and replaces) its own earlier plot and no other file."""

_CREATOR_KEYS: Final[dict[str, str]] = {
    "png": "Software", "pdf": "Creator", "svg": "Creator", "ps": "Creator", "eps": "Creator",
}  # fmt: skip
_MAX_PLOT_BYTES: Final[int] = 64 * 2**20  # a larger file is no plot of ours


def default_max_radius(reports: Iterable[Certified]) -> float:
    """A little beyond the largest certified radius of ``reports`` (1.0 if there is none).

    Examples:
        >>> default_max_radius([])
        1.0
    """
    largest = max((float(np.max(r.radius)) for r in reports if len(r)), default=0.0)
    return largest * 1.05 if largest > 0 else 1.0


def plot_certified_accuracy(
    reports: Mapping[str, Certified] | Certified,
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
    if not any(len(r) for r in reports.values()):
        raise ValueError("nothing to plot: no report holds certificates")
    top = max_radius if max_radius is not None else default_max_radius(reports.values())
    bounds = {k: r.pa_lower[np.isfinite(r.pa_lower)] for k, r in reports.items()}
    bounds = {k: v for k, v in bounds.items() if v.size}  # Cohen et al.'s logs have none
    fig = Figure(figsize=(6.0, 6.5 if bounds else 4.0), layout="constrained")
    ax, hist = fig.subplots(2, 1, height_ratios=(3, 2)) if bounds else (fig.add_subplot(), None)
    if hist is not None:
        for label, values in bounds.items():
            hist.hist(values, bins=40, range=(0.0, 1.0), histtype="step", label=label)
        hist.axvline(0.5, color="grey", linestyle=":", linewidth=1.0)  # below: abstain
        hist.set(xlim=(0.0, 1.0), ylabel="images")
        hist.set_xlabel("pa_lower (lower confidence bound of the top class's probability)")
    for label, report in reports.items():
        if len(report):
            radii, accuracy = report.curve(max_radius=top)
            ax.plot(radii, accuracy, label=f"{label} (ACR {report.acr:.3f})")
    ax.set(xlabel="radius (L2, pixel units of [0, 1] images)", ylabel="certified accuracy")
    ax.set(xlim=(0.0, top), ylim=(0.0, 1.0))
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    out = Path(path)
    fmt = out.suffix[1:].lower() or fig.canvas.get_default_filetype()
    metadata = {_CREATOR_KEYS[fmt]: PLOT_CREATOR} if fmt in _CREATOR_KEYS else None
    clean_stale_temporaries(out.parent, [out.name])
    atomic_write(out, lambda f: fig.savefig(f, format=fmt, dpi=150, metadata=metadata))
    return out


def is_own_plot(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a plot ``plot_certified_accuracy`` wrote (PNG, PDF, SVG, PS, EPS:
    the formats that record ``PLOT_CREATOR``).

    Only the metadata entry itself counts, where matplotlib writes it (``plot_creator``): the
    marker's text anywhere else (a caption, a comment, an image's pixels) does not.

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
    return len(data) <= _MAX_PLOT_BYTES and plot_creator(data) == PLOT_CREATOR


_PNG: Final[bytes] = b"\x89PNG\r\n\x1a\n"
_PDF_INFO: Final = re.compile(rb"trailer\s*<<[^>]*?/Info\s+(\d+)\s+(\d+)\s+R")
_PDF_CREATOR: Final = re.compile(rb"/Creator\s*\(((?:[^()\\]|\\.)*)\)")
_SVG: Final = re.compile(
    rb"\A\s*(?:<\?xml[^>]*>\s*)?(?:<!DOCTYPE[^>]*>\s*)?<svg\b[^>]*>\s*<metadata>\s*"
    rb"<rdf:RDF\b[^>]*>\s*<cc:Work>(.*?)</cc:Work>",
    re.DOTALL,
)
_SVG_CREATOR: Final = re.compile(rb"<dc:creator>\s*<cc:Agent>\s*<dc:title>([^<]*)</dc:title>")


def plot_creator(data: bytes) -> str | None:
    """The creator a plot file records, where matplotlib writes it; ``None`` if there is none.

    PNG: a ``tEXt`` chunk with the key ``Software`` (found by walking the chunks; matplotlib
    writes an ASCII creator as ``tEXt``); PDF: ``/Creator`` of the trailer's ``/Info``
    dictionary; SVG: the ``<dc:creator>`` of the ``<metadata>`` element that opens the
    ``<svg>``; PS and EPS: the ``%%Creator:`` line of the header comments.

    Examples:
        >>> plot_creator(b"%!PS-Adobe-3.0\\n%%Creator: me\\n%%EndComments\\n")
        'me'
        >>> plot_creator(b"%!PS-Adobe-3.0\\n%%EndComments\\n%%Creator: me\\n") is None
        True
    """
    if data.startswith(_PNG):
        return _png_text(data, b"Software")
    if data.startswith(b"%PDF-"):
        trailers = _PDF_INFO.findall(data)
        if not trailers:
            return None
        number, generation = trailers[-1]  # the last trailer: that of the latest update
        start = re.compile(rb"(?:^|[\r\n])" + number + rb"\s+" + generation + rb"\s+obj\s*<<")
        objects = list(start.finditer(data))
        end = data.find(b">>", objects[-1].end()) if objects else -1
        creator = _PDF_CREATOR.search(data, objects[-1].end(), end) if end >= 0 else None
        return creator[1].decode("latin-1") if creator else None
    if data.startswith(b"%!PS-Adobe"):
        for line in data[: 64 * 1024].splitlines()[1:]:  # the header comments come first
            if not line.startswith(b"%%") or line.startswith(b"%%EndComments"):
                return None
            if line.startswith(b"%%Creator:"):
                return line[len(b"%%Creator:") :].strip().decode("latin-1")
        return None
    work = _SVG.match(data)
    creator = _SVG_CREATOR.search(work[1]) if work else None
    return creator[1].decode("utf-8", "replace") if creator else None


def _png_text(data: bytes, key: bytes) -> str | None:
    """The text of the first ``tEXt`` chunk named ``key`` of a PNG file."""
    at = len(_PNG)
    while at + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[at : at + 8])
        body = data[at + 8 : at + 8 + length]
        at += 12 + length  # length, type, data, CRC
        if len(body) != length or kind == b"IEND":
            return None
        name, _, text = body.partition(b"\0")
        if kind == b"tEXt" and name == key:
            return text.decode("latin-1")
    return None
