"""``peftsmoothing report``: certified-accuracy table, ACR and curve from certification logs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

#: Exceptions ``peftsmoothing report`` reports as a one-line error (exit status 1), not a
#: traceback: unreadable or empty logs, matplotlib not installed for ``--plot`` (and, as for
#: every command, a missing file or a ``--plot`` file that is not an earlier plot: ``OSError``).
USER_ERRORS: tuple[type[Exception], ...] = (ValueError, ImportError)


def run(args: argparse.Namespace) -> int:
    """Print the report of ``args.logs`` (merged, or one row each with ``--compare``).

    Examples:
        >>> import argparse, os, tempfile
        >>> from peftsmoothing.report.certlog import LOG_COLUMNS_V1 as LOG_COLUMNS
        >>> path = os.path.join(tempfile.mkdtemp(), "certify.tsv")
        >>> with open(path, "w") as f:
        ...     _ = f.write("\\t".join(LOG_COLUMNS) + "\\n")
        ...     _ = f.write("0\\t3\\t3\\t0.5\\t1\\t0.84\\t99\\t100\\t2\\n")
        >>> run(argparse.Namespace(logs=[path], radii=[0.0, 0.5], format="csv", plot=None,
        ...                        compare=False, max_radius=None, allow_mixed=False,
        ...                        overwrite=False, confidence=0.95, alpha=None))
        name,0.0,0.5,acr,abstain_rate,images
        certify,1.0,1.0,0.5,0.0,1
        0
    """
    from ..report.accuracy import CertificationReport, certified_accuracy_table
    from ..report.paired import paired_table
    from ..report.plots import is_own_plot, plot_certified_accuracy
    from ..report.tables import bound_table
    from ._output import check_output

    if args.plot:  # before any work: never over a file that is not an earlier plot
        check_output(args.plot, own=is_own_plot, overwrite=args.overwrite, flag="--plot",
                     what="a plot written by peftsmoothing")
    if args.compare:
        reports = {
            name: CertificationReport.from_log(path)
            for name, path in zip(log_names(args.logs), args.logs, strict=True)
        }
    else:
        merged = CertificationReport.from_logs(args.logs, allow_mixed=args.allow_mixed)
        if len(args.logs) > 1:
            merged.name = f"{merged.name} (+{len(args.logs) - 1})"
        reports = {merged.name or "": merged}
    if args.format == "csv":
        print(certified_accuracy_table(reports, args.radii, format="csv"))
    else:
        for name, report in reports.items():
            if not len(report):
                raise ValueError(f"{name}: the log holds no certificates yet")
            print(f"{name}: images {len(report)}, clean accuracy {report.clean_accuracy:.3f}, "
                  f"ACR {report.acr:.3f}, abstain rate {report.abstain_rate:.3f}")
        print(f"\n{certified_accuracy_table(reports, args.radii, format='markdown')}\n")
        print("Lower bound on the smoothed classifier's certified accuracy on these images "
              f"(Cohen et al. 2019), holding at all radii at once with probability >= "
              f"{args.confidence:g} per row, given that each certificate is wrong with "
              "probability <= the run's alpha:\n")
        print(bound_table(reports, args.radii, args.confidence, args.alpha))
        if args.compare and len(reports) > 1:
            print(f"\n{paired_table(reports, args.radii)}")
    if args.plot:
        out = plot_certified_accuracy(reports, args.plot, max_radius=args.max_radius)
        print(f"wrote {out}", file=sys.stderr)
    return 0


def log_names(paths: list[str]) -> list[str]:
    """Short, distinct names for logs: the file name without extension, or, where two logs
    share it (``lora/certify.tsv``, ``full/certify.tsv``), as many parent folders as needed.

    Examples:
        >>> log_names(["runs/lora/certify.tsv", "runs/full/certify.tsv", "prompt.tsv"])
        ['lora/certify', 'full/certify', 'prompt']
        >>> log_names(["a.tsv", "a.tsv"])
        Traceback (most recent call last):
        ...
        ValueError: the same log is given twice: a.tsv
    """
    parts = [Path(p).with_suffix("").parts for p in paths]
    depth = [1] * len(paths)
    while True:
        names = ["/".join(p[-d:]) for p, d in zip(parts, depth, strict=True)]
        clashes = {n for n in names if names.count(n) > 1}
        if not clashes:
            return names
        grow = [i for i, n in enumerate(names) if n in clashes and depth[i] < len(parts[i])]
        if not grow:
            raise ValueError(f"the same log is given twice: {paths[names.index(min(clashes))]}")
        for i in grow:
            depth[i] += 1


def register(subparsers: Any) -> None:
    """Add the ``report`` sub-command."""
    from ..core.validation import check_alpha
    from ..report.tables import DEFAULT_RADII
    from ._args import add_confidence_argument, checked

    p = subparsers.add_parser(
        "report",
        help="certified accuracy, ACR and curves from certification logs",
        description="Merge certification logs (such as the shards of one run) and print the "
        "approximate certified-accuracy table of Cohen et al. (2019); --compare keeps one row "
        "and one curve per log, and compares every log with the first on their shared images.",
    )
    p.add_argument("logs", nargs="+", metavar="LOG",
                   help="logs written by `certify` (or by Cohen et al.'s certify.py)")
    p.add_argument("--radii", type=float, nargs="+", default=list(DEFAULT_RADII),
                   help="table columns")
    p.add_argument("--format", choices=("markdown", "csv"), default="markdown",
                   help="output format of the table")
    add_confidence_argument(p)
    p.add_argument("--alpha", type=checked(float, "alpha", check_alpha),
                   help="the run's alpha, for logs that do not record it (Cohen et al.'s "
                   "layout); default: from the log's settings file")
    p.add_argument("--plot", metavar="PNG",
                   help="save certified accuracy vs radius to this image file (format from the "
                   "extension), written atomically; an earlier plot there is replaced, any "
                   "other file only with --overwrite")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the --plot file even if it is not an earlier plot")
    p.add_argument("--max-radius", type=float,
                   help="x-axis limit of the plot (None: from the largest radius)")
    p.add_argument("--compare", action="store_true",
                   help="one row/curve per log instead of merging them, plus (markdown format) "
                   "paired differences against the first log")
    p.add_argument("--allow-mixed", action="store_true",
                   help="merge logs even if their settings files differ (refused by default)")
    p.set_defaults(func=run, user_errors=USER_ERRORS)
