"""``peftsmoothing methods``: list the registered methods with a one-line description."""

from __future__ import annotations

import argparse
from typing import Any


def run(args: argparse.Namespace) -> int:
    """Print every registered method and its description; returns 0.

    Examples:
        >>> import argparse
        >>> run(argparse.Namespace())  # doctest: +ELLIPSIS
        adapter ...
        0
    """
    from ..methods.base import method_descriptions

    descriptions = method_descriptions()
    width = max((len(n) for n in descriptions), default=0)
    for name, text in descriptions.items():
        print(f"{name:<{width}}  {text}")
    return 0


def register(subparsers: Any) -> None:
    """Add the ``methods`` sub-command."""
    p = subparsers.add_parser("methods", help="list the registered PEFT methods")
    p.set_defaults(func=run)
