"""``peftsmoothing card``: write a saved model's certification card (``README.md``)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ._args import add_confidence_argument, add_model_arguments, load_model
from .report import log_names

#: Exceptions ``peftsmoothing card`` reports as a one-line error (exit status 1); a missing
#: file, or a README.md that is not an earlier card, is an ``OSError``, as for every command.
USER_ERRORS: tuple[type[Exception], ...] = (ValueError,)


def run(args: argparse.Namespace) -> int:
    """Check that the logs certified this model, then write its card."""
    from ..core.fingerprint import model_fingerprint
    from ..model.card import write_card
    from ..report.accuracy import CertificationReport

    if args.model.startswith("hf-hub:"):
        raise ValueError("card writes MODEL/README.md: give a local directory (push_to_hub "
                         "uploads a model with its card)")
    reports = {}
    for name, path in zip(log_names(args.logs), args.logs, strict=True):
        report = CertificationReport.from_log(path)
        if report.settings is None:
            raise ValueError(f"{path}: no settings file beside it; a card states every setting")
        reports[name] = report
    # the logs must be of this very model: its full fingerprint
    fingerprint = model_fingerprint(load_model(args))
    for name, report in reports.items():
        if (report.settings or {}).get("model_sha256") != fingerprint:
            raise ValueError(
                f"{name}: the log was certified with another model than {args.model} "
                "(its settings' model_sha256 differs)"
            )
    out = write_card(args.model, reports, args.radii, args.confidence, overwrite=args.overwrite)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def register(subparsers: Any) -> None:
    """Add the ``card`` sub-command."""
    from ..report.tables import DEFAULT_RADII

    p = subparsers.add_parser(
        "card",
        help="write a saved model's certification card (README.md, the Hub's model-card format)",
        description="Write MODEL/README.md from the model's peftsmoothing.json and certification "
        "logs of that model (with their settings files): every setting and number comes from "
        "those files, and rewriting from the same files gives the same bytes.",
    )
    add_model_arguments(p)
    p.add_argument("logs", nargs="+", metavar="LOG", help="logs written by `certify --out`")
    p.add_argument("--radii", type=float, nargs="+", default=list(DEFAULT_RADII),
                   help="columns of the certified-accuracy tables")
    add_confidence_argument(p)
    p.add_argument("--overwrite", action="store_true",
                   help="replace a README.md that is not an earlier card")
    p.set_defaults(func=run, user_errors=USER_ERRORS)
