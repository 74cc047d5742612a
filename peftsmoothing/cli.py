"""The ``peftsmoothing`` command line: a thin dispatcher over ``peftsmoothing.commands``.

Building the parser imports neither torch nor scipy (nor timm): every command module imports
what it runs inside its ``run()``, and the closed sets its flags offer (methods, losses,
datasets, precisions) come from the torch-free [`core.names`][peftsmoothing.core.names]. So
``peftsmoothing --help`` and ``peftsmoothing COMMAND --help`` answer at once.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from ._version import __version__
from .commands import COMMANDS

__all__ = ["HelpFormatter", "build_parser", "main"]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """The help format of every ``peftsmoothing`` parser: each flag shows its default.

    A help text that already says ``%(default)s`` is left as it is.
    """


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of the ``peftsmoothing`` command (imports no torch).

    Examples:
        >>> build_parser().parse_args(["methods"]).command
        'methods'
    """
    parser = argparse.ArgumentParser(
        prog="peftsmoothing",
        description="Certified robustness: parameter-efficient fine-tuning + randomized smoothing.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f".commands.{name}", __package__).register(sub)
    for command in sub.choices.values():
        command.formatter_class = HelpFormatter
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
    # File-system errors (a missing or unreadable file, a folder where a file belongs, a full
    # or read-only disk) are the user's too: OSError's message names the file.
    try:
        return int(args.func(args))
    except (*getattr(args, "user_errors", ()), OSError) as err:
        print(f"peftsmoothing {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
