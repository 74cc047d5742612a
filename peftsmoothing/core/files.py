"""Crash-safe file writing shared by checkpoints, saved models and certification logs.

Temporary files and folders are named ``.<name>.peftsmoothing-tmp-<pid>-<random>.tmp`` in the
destination's folder (``temporary_prefix``), so that ``clean_stale_temporaries`` can recognise
exactly those this library made, and remove those a killed run left behind without touching
those of a run that is still alive, or anything else.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import tempfile
from collections.abc import Callable, Collection
from pathlib import Path
from typing import IO, Any, Final

__all__ = [
    "atomic_write",
    "clean_stale_temporaries",
    "file_inside",
    "fsync_dir",
    "read_json",
    "temporary_prefix",
]

TEMPORARY_INFIX: Final[str] = "peftsmoothing-tmp"
"""The fixed part of every temporary name this library builds (see ``temporary_prefix``)."""

_TEMPORARY_RE: Final = re.compile(
    rf"\.(?P<name>.+)\.{TEMPORARY_INFIX}-(?P<pid>[1-9][0-9]{{0,9}})-[a-z0-9_]{{1,32}}\.tmp"
)


def temporary_prefix(name: str, *, pid: int | None = None) -> str:
    """The prefix of the temporary files for ``name`` of process ``pid`` (default: this one).

    The full name is this prefix, ``tempfile``'s random letters and ``.tmp`` (pass
    ``suffix=".tmp"`` to ``tempfile.mkstemp``), as the module docstring says.

    Examples:
        >>> import os
        >>> temporary_prefix("log.tsv") == f".log.tsv.peftsmoothing-tmp-{os.getpid()}-"
        True
    """
    return f".{name}.{TEMPORARY_INFIX}-{os.getpid() if pid is None else pid}-"


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` may be running (when unsure: yes)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # alive, owned by someone else; or unsure
        return True
    return True


def clean_stale_temporaries(
    directory: str | os.PathLike[str],
    names: Collection[str] | None = None,
    *,
    folders: bool = False,
) -> list[Path]:
    """Remove the temporaries that killed runs of this library left in ``directory``.

    Only entries named exactly as ``temporary_prefix`` builds them, whose process no longer
    runs on this machine, are removed; those of live processes (another run writing beside
    this one) stay, and so does everything else: other names, symbolic links (never followed),
    and folders unless ``folders`` is true.

    Args:
        directory: The folder to clean (a missing folder is fine).
        names: Only the temporaries of these destination names (default: of any name).
        folders: Also remove temporary folders (for folders this library owns, such as a
            checkpoint directory); by default only regular files are removed.

    Returns:
        The removed paths.

    Examples:
        >>> import pathlib, tempfile
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> dead = d / f"{temporary_prefix('x.pt', pid=4999999)}abc.tmp"  # no such process
        >>> _ = dead.write_bytes(b"torn")
        >>> _ = (d / f"{temporary_prefix('y.pt')}abc.tmp").write_bytes(b"mine")  # alive
        >>> _ = (d / ".photos.4999999.backup.tmp").write_bytes(b"a user's")  # not ours
        >>> [p.name for p in clean_stale_temporaries(d)] == [dead.name]
        True
    """
    import shutil

    folder = Path(directory)
    if not folder.is_dir():
        return []
    removed = []
    for path in sorted(folder.iterdir()):
        match = _TEMPORARY_RE.fullmatch(path.name)
        if match is None or (names is not None and match["name"] not in names):
            continue
        if _pid_alive(int(match["pid"])):  # a live run's, or no pid at all (above pid_t)
            continue
        with contextlib.suppress(OSError):
            mode = path.lstat().st_mode
            if stat.S_ISREG(mode):
                path.unlink()
            elif folders and stat.S_ISDIR(mode):
                shutil.rmtree(path)
            else:
                continue
            removed.append(path)
    return removed


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory so that renames inside it survive a power loss (best effort)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(
    path: str | os.PathLike[str], write: bytes | Callable[[IO[bytes]], object]
) -> None:
    """Write ``path`` through a temporary file in the same directory, fsync, then rename.

    A reader sees either the old file or the complete new one, never a torn write. The file
    gets the usual mode (``0666`` minus the umask), not ``mkstemp``'s ``0600``.

    Args:
        path: Destination file.
        write: The bytes to write, or a function that writes to the open binary file.

    Examples:
        >>> import pathlib, tempfile
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.bin"
        >>> atomic_write(p, b"abc")
        >>> p.read_bytes()
        b'abc'
    """
    target = Path(path)
    fd, tmp = tempfile.mkstemp(
        dir=target.parent, prefix=temporary_prefix(target.name), suffix=".tmp"
    )
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            if isinstance(write, bytes):
                f.write(write)
            else:
                write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def file_inside(directory: str | os.PathLike[str], name: str) -> Path:
    """``directory / name``, refusing a symbolic link that leads out of ``directory``.

    Raises:
        ValueError: If the path resolves to a place outside ``directory``.

    Examples:
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> file_inside(d, "model.json") == Path(d) / "model.json"
        True
    """
    folder = Path(directory)
    path = folder / name
    target = path.resolve()  # the path itself, unless it is a link
    if folder.resolve() not in target.parents:
        raise ValueError(f"{path} is a link to {target}, outside {folder}: refused")
    return path


def read_json(path: str | os.PathLike[str]) -> Any:
    """The parsed JSON of file ``path``; a file that is not JSON is one line, not a traceback.

    Raises:
        ValueError: If the file is not valid UTF-8 JSON, or nests deeper than Python's
            recursion limit.

    Examples:
        >>> import pathlib, tempfile
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.json"
        >>> _ = p.write_text("[" * 100_000)
        >>> read_json(p)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: ...x.json is not valid JSON (nested too deeply)
    """
    try:
        return json.loads(Path(path).read_bytes())
    except RecursionError:
        raise ValueError(f"{path} is not valid JSON (nested too deeply)") from None
    except ValueError as err:  # not UTF-8, not JSON, or an integer too long to convert
        raise ValueError(f"{path} is not valid JSON ({err})") from None
