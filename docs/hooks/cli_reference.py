"""MkDocs hook: generate ``cli.md`` from the ``peftsmoothing`` parsers at build time.

The page is never written by hand, so it cannot drift from the command line: each sub-command's
``format_help()`` becomes one section. Listed under ``hooks:`` in ``mkdocs.yml``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
PAGE = "cli.md"


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def render() -> str:
    """The markdown of the CLI reference page."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from peftsmoothing.cli import build_parser

    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal: make the page reproducible
    parser = build_parser()
    lines = [
        "# Command-line reference",
        "",
        "Generated from the `peftsmoothing` parsers when the site is built "
        "(`docs/hooks/cli_reference.py`), so it always matches `peftsmoothing COMMAND --help`.",
        "",
        "```text",
        parser.format_help().rstrip(),
        "```",
    ]
    for name, sub in _subparsers(parser).items():
        lines += ["", f"## `peftsmoothing {name}`", "", "```text", sub.format_help().rstrip(),
                  "```"]
    return "\n".join(lines) + "\n"


def on_files(files: Files, config: Any) -> Files:
    """Add the generated ``cli.md`` to the site's files."""
    files.append(File.generated(config, PAGE, content=render()))
    return files
