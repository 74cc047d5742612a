"""Crash-safe file writing shared by checkpoints, saved models and certification logs."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

import torch

__all__ = ["atomic_save", "atomic_write", "fsync_dir"]


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
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
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
    """``torch.save(obj)`` atomically (see :func:`atomic_write`); ``bytes`` are written as is.

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
        atomic_write(path, lambda f: torch.save(obj, f))
