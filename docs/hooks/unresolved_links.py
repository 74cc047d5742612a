"""MkDocs hook: fail the build on a cross-reference that did not resolve.

A docstring link ``[`X`][peftsmoothing.X]`` to an object the API pages do not render (a typo, a
renamed method, an inherited member not shown) is left in the page as raw text, and
``mkdocs build --strict`` does not notice. This hook does. Listed under ``hooks:`` in
``mkdocs.yml``.
"""

from __future__ import annotations

import re
from typing import Any

from mkdocs.exceptions import PluginError

_RAW_REFERENCE = re.compile(r"\]\[(peftsmoothing[\w.]*)\]")


def on_post_page(output: str, page: Any, config: Any) -> str:
    """Refuse a rendered page that still holds a ``][peftsmoothing...]`` reference."""
    missing = sorted(set(_RAW_REFERENCE.findall(output)))
    if missing:
        raise PluginError(f"{page.file.src_path}: unresolved cross-references: {missing}")
    return output
