"""The files a command writes: checked before any work, never over a file that is not its own.

A command's output (``predict --out``, ``report --plot``) is written atomically
(``peftsmoothing.core.files.atomic_write``), so a kill leaves the previous file whole. Before
any work the command checks the path with ``check_output``: a file that is recognisably the
command's own earlier output is replaced, anything else (a certification log, a user's image)
only with ``--overwrite``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["check_output", "starts_with"]


def check_output(
    path: str | os.PathLike[str],
    *,
    own: Callable[[Path], bool],
    overwrite: bool,
    flag: str,
    what: str,
) -> Path:
    """Check that a command may write ``path``: missing, its own earlier output, or
    ``overwrite``; and remove temporaries that killed runs left for it.

    Args:
        path: The file the command will write.
        own: Whether an existing file is recognisably this command's earlier output.
        overwrite: The user asked to replace whatever is there (``--overwrite``).
        flag: The flag that named ``path`` (for the message), e.g. ``"--out"``.
        what: What the command writes (for the message), e.g. ``"a predict output"``.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        IsADirectoryError: If ``path`` is a folder.
        FileExistsError: If ``path`` exists, is not ``own`` and ``overwrite`` is false.

    Examples:
        >>> import pathlib, tempfile
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "log.tsv"
        >>> _ = p.write_text("idx\\tlabel\\tpredict\\tradius\\n")
        >>> check_output(p, own=starts_with(b"idx\\tlabel\\tpredict\\tcorrect\\t"),
        ...              overwrite=False, flag="--out", what="a predict output")
        ... # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        FileExistsError: --out .../log.tsv exists and is not a predict output; pass ...
    """
    from ..core.files import clean_stale_temporaries

    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(f"{flag} {target} is a folder; give the path of a file")
    if os.path.lexists(target) and not overwrite and not (target.is_file() and own(target)):
        raise FileExistsError(
            f"{flag} {target} exists and is not {what}; pass --overwrite to replace it, or "
            f"choose another {flag}"
        )
    clean_stale_temporaries(target.parent, [target.name])
    return target


def starts_with(prefix: bytes) -> Callable[[Path], bool]:
    """An ``own`` test for ``check_output``: the file begins with ``prefix`` (e.g. a header).

    Examples:
        >>> import pathlib, tempfile
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.tsv"
        >>> _ = p.write_bytes(b"idx\\tlabel\\n0\\t1\\n")
        >>> starts_with(b"idx\\tlabel\\n")(p), starts_with(b"idx\\tradius\\n")(p)
        (True, False)
    """

    def own(path: Path) -> bool:
        try:
            with open(path, "rb") as f:
                return f.read(len(prefix)) == prefix
        except OSError:
            return False

    return own
