"""Paired comparison of two methods certified on the same images (exact McNemar test).

Two methods certified on the same test images are compared image by image: at a radius ``r``
each image is certified correct by both, by one, or by neither, and only the discordant images
(one but not the other) say which method is better. This is far more precise than comparing
two certified accuracies.
[`peftsmoothing.CertificationReport.compare_to`][peftsmoothing.CertificationReport.compare_to] pairs
the images and calls ``paired_difference`` once per radius; ``paired_table`` shows several
reports against the first (``peftsmoothing report --compare``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["PairedDifference", "paired_difference", "paired_table"]


@dataclass(frozen=True)
class PairedDifference:
    """Difference in certified accuracy between two reports on the same images, at one radius.

    Made by [`CertificationReport.compare_to`][peftsmoothing.CertificationReport.compare_to]. Each
    image is certified correct at ``radius`` by both reports, by one, or by neither; only the images
    where they disagree (the discordant pairs) carry information about which is better.

    Attributes:
        radius: The radius of the comparison.
        difference: Certified accuracy of the first report minus the second's, on the shared
            images.
        stderr: Standard error of ``difference`` (the per-image differences' sample standard
            deviation over ``sqrt(images)``; 0 for fewer than two images).
        p_value: Two-sided exact McNemar test of "both are equally accurate": the binomial
            probability of a split of the discordant pairs at least as uneven as observed
            (1.0 when there are none).
        better: Images only the first report certifies at ``radius``.
        worse: Images only the second report certifies at ``radius``.
        images: Images both reports hold.
    """

    radius: float
    difference: float
    stderr: float
    p_value: float
    better: int
    worse: int
    images: int

    def __str__(self) -> str:
        return f"{self.difference:+.3f} ± {self.stderr:.3f} (p = {self.p_value:.2g})"


def paired_difference(first: np.ndarray, second: np.ndarray, radius: float) -> PairedDifference:
    """Compare two methods image by image at one radius.

    Args:
        first: Boolean array, one entry per shared image: certified correct at ``radius`` by
            the first method.
        second: The same for the second method, in the same image order.
        radius: The radius the arrays refer to (recorded in the result).

    Returns:
        The [`PairedDifference`][peftsmoothing.PairedDifference] of ``first`` minus ``second``.

    Examples:
        >>> import numpy as np
        >>> d = paired_difference(np.array([True] * 10 + [False] * 10), np.zeros(20, bool), 0.0)
        >>> d.difference, d.better, d.worse, round(d.p_value, 6)  # 2 * 0.5 ** 10
        (0.5, 10, 0, 0.001953)
    """
    from scipy.stats import binomtest

    diff = first.astype(np.float64) - second.astype(np.float64)
    better, worse = int(np.sum(first & ~second)), int(np.sum(second & ~first))
    discordant = better + worse
    p_value = float(binomtest(better, discordant, 0.5).pvalue) if discordant else 1.0
    stderr = float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else 0.0
    return PairedDifference(
        radius=radius, difference=float(diff.mean()), stderr=stderr,
        p_value=min(1.0, p_value), better=better, worse=worse, images=len(diff),
    )  # fmt: skip


def paired_table(reports: Mapping[str, Any], radii: list[float]) -> str:
    """Markdown table: every report minus the first, image by image, at each radius
    (``CertificationReport.compare_to``), under a line that says so.

    Examples:
        >>> from peftsmoothing import CertificationReport
        >>> from peftsmoothing.report.certlog import LogRow
        >>> a = CertificationReport([LogRow(i, 0, 0, 0.5, 1, 0.9, 90, 100, 1) for i in range(4)])
        >>> b = CertificationReport([LogRow(i, 0, 1, 0.5, 0, 0.9, 90, 100, 1) for i in range(4)])
        >>> print(paired_table({"a": a, "b": b}, [0.0]).splitlines()[-1])
        | b | -1.000 ± 0.000 (p = 0.12) | 4 |
    """
    first, *others = reports
    lines = [
        f"Paired differences against {first} (same images; ± standard error, p = exact "
        "McNemar test):",
        "",
        "| log | " + " | ".join(f"r={r:g}" for r in radii) + " | shared images |",
        "|---|" + "---:|" * (len(radii) + 1),
    ]
    for name in others:
        try:
            diffs = reports[name].compare_to(reports[first], radii)
        except ValueError as err:  # other data: say so instead of failing the whole report
            lines.append(f"| {name} | " + " | ".join(f"n/a: {err}" for _ in radii) + " | |")
            continue
        images = next(iter(diffs.values())).images
        lines.append(f"| {name} | " + " | ".join(str(diffs[r]) for r in radii) + f" | {images} |")
    return "\n".join(lines)
