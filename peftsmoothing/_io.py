"""Crash-safe file writing shared by checkpoints, saved models and certification logs.

Temporary files and folders are named ``.<name>.<pid>.<random>.tmp`` in the destination's
folder, so that ``clean_stale_temporaries`` can remove those a killed run left behind
without touching those of a run that is still alive.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

__all__ = [
    "atomic_save",
    "atomic_write",
    "clean_stale_temporaries",
    "fsync_dir",
    "temporary_prefix",
]


def temporary_prefix(name: str) -> str:
    """The prefix of this process's temporary files for ``name`` (see the module docstring).

    Examples:
        >>> import os
        >>> temporary_prefix("log.tsv") == f".log.tsv.{os.getpid()}."
        True
    """
    return f".{name}.{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def clean_stale_temporaries(directory: str | os.PathLike[str]) -> list[Path]:
    """Remove temporary files and folders that dead processes left in ``directory``.

    Only names of the form ``.<name>.<pid>.<random>.tmp`` whose process no longer runs on this
    machine are removed; those of live processes (another run writing beside this one) stay.

    Args:
        directory: The folder to clean (a missing folder is fine).

    Returns:
        The removed paths.

    Examples:
        >>> import pathlib, tempfile
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (d / ".x.pt.999999999.abc.tmp").write_bytes(b"torn")  # no such process
        >>> _ = (d / f"{temporary_prefix('y.pt')}abc.tmp").write_bytes(b"mine")
        >>> [p.name for p in clean_stale_temporaries(d)]
        ['.x.pt.999999999.abc.tmp']
    """
    import re
    import shutil

    folder = Path(directory)
    if not folder.is_dir():
        return []
    pattern = re.compile(r"\..+\.(\d+)\.[^.]+\.tmp")
    removed = []
    for path in folder.iterdir():
        m = pattern.fullmatch(path.name)
        if m is None or _pid_alive(int(m.group(1))):
            continue
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
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


def atomic_save(obj: object, path: str | os.PathLike[str]) -> None:
    """``torch.save(obj)`` atomically (see ``atomic_write``); ``bytes`` are written as is.

    Examples:
        >>> import pathlib, tempfile, torch
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "t.pt"
        >>> atomic_save({"w": torch.ones(2)}, p)
        >>> torch.load(p)["w"].tolist()
        [1.0, 1.0]
    """
    if isinstance(obj, bytes):
        atomic_write(path, obj)
    else:
        import torch  # here: the command line imports this module without torch

        atomic_write(path, lambda f: torch.save(obj, f))
