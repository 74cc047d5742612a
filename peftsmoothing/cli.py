"""The ``peftsmoothing`` command line: a thin dispatcher over ``peftsmoothing.commands``."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from ._version import __version__
from .commands import COMMANDS

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of the ``peftsmoothing`` command.

    Examples:
        >>> build_parser().parse_args(["methods"]).command
        'methods'
    """
    parser = argparse.ArgumentParser(
        prog="peftsmoothing",
        description="Certified robustness: parameter-efficient fine-tuning + randomized smoothing.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f".commands.{name}", __package__).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``peftsmoothing`` console script; returns the exit status.

    Examples:
        >>> main(["methods"])  # doctest: +ELLIPSIS
        adapter ...
        0
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    # Each command names the exceptions that are the user's to fix (bad options, missing files);
    # those become one line on stderr and exit status 1, anything else keeps its traceback.
    user_errors: tuple[type[Exception], ...] = getattr(args, "user_errors", ())
    try:
        return int(args.func(args))
    except user_errors as err:
        print(f"peftsmoothing {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
