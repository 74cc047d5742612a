"""Appending to a certification log: the lock, the checks before resuming, torn-line recovery.

See ``peftsmoothing.report.certlog`` for the format as a whole.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from ...core.files import atomic_write, clean_stale_temporaries, fsync_dir
from .rows import HEADERS, MAX_LOG_BYTES, LogRow, check_log_file, parse_log
from .settings import (
    FORMAT_VERSION,
    V1_KEYS,
    load_settings_file,
    read_settings,
    settings_diff,
    settings_path,
)


def lock_log(path: Path) -> BinaryIO:
    """Open the log (created if missing) and take an exclusive ``flock`` on that descriptor,
    held until it is closed, so that two processes never append to one log, also through a
    symbolic link (POSIX; no lock where ``fcntl`` is missing).

    Raises:
        RuntimeError: If another process holds the lock.
        ValueError: If the log is not a regular file, or too large (``check_log_file``).

    Examples:
        >>> import tempfile
        >>> handle = lock_log(Path(tempfile.mkdtemp()) / "log.tsv")
        >>> handle.close()
    """
    return _lock(path)[0]


def _lock(path: Path) -> tuple[BinaryIO, Path, bool]:
    """``lock_log``'s handle, the resolved path it opened, and whether this call created
    that file (``O_EXCL``: told by the kernel, not guessed from the path as given)."""
    real = Path(os.path.realpath(path))
    real.parent.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(real):  # never open a device, a FIFO or a folder
        check_log_file(path, os.stat(real))
    try:
        descriptor = os.open(real, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o666)
        created = True
    except FileExistsError:
        descriptor = os.open(real, os.O_RDWR | os.O_APPEND)
        created = False
    handle = os.fdopen(descriptor, "a+b")
    try:
        check_log_file(path, os.fstat(descriptor))  # what was opened
        with contextlib.suppress(ImportError):  # no lock where fcntl is missing (Windows)
            import fcntl

            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise RuntimeError(
            f"another process is certifying into {path}; give each process its own log "
            "(e.g. shard=(i, k) with one log per shard)"
        ) from None
    except BaseException:
        handle.close()
        raise
    return handle, real, created


@dataclass
class OpenLog:
    """A log opened for appending by ``open_log``; holds its lock until ``close``."""

    path: Path
    """The log's resolved path."""
    handle: BinaryIO
    layout: str
    """The layout rows are appended in: ``"v2"``, ``"v1"`` (a resumed format-1 log) or
    ``"cohen"``."""
    rows: list[LogRow]
    """The rows already in the log."""

    def append(self, row: LogRow) -> None:
        """Write one row, flushed and fsynced."""
        self.handle.write(row.to_line(self.layout).encode())
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def close(self) -> None:
        """Close the file, which releases the lock."""
        self.handle.close()


def open_log(
    path: str | os.PathLike[str], settings: dict[str, Any], resume: bool, stacklevel: int = 2
) -> OpenLog:
    """Lock, check and open a log for appending rows certified with ``settings``.

    - The lock is taken first (``lock_log``); everything below happens under it.
    - A log with rows must have its settings file, and they must equal ``settings``; a log with
      only a header (or nothing) takes the new settings.
    - A format-1 log (settings without ``format_version``) is compared on format 1's keys and
      resumed in format 1, with a ``UserWarning``: its rows carry no data identity.
    - A torn last line is truncated with a ``UserWarning`` (``stacklevel`` counts from this
      function, so that the warning points at the user's call).

    Checking the rows' data identity needs the dataset: see ``check_identity``.

    Raises:
        FileExistsError: If the log is not empty and ``resume`` is false, or if a new log's
            settings file would replace a file that is not a log's settings (such as a saved
            model's ``peftsmoothing.json``); a log file this call created is then removed.
        ValueError: For other settings, a missing settings file, or a corrupted log.
        RuntimeError: If another process holds the log.
    """
    handle, real, created = _lock(Path(path))
    try:
        return _open_locked(Path(path), real, handle, settings, resume, stacklevel + 1)
    except BaseException:
        opened = os.fstat(handle.fileno())
        with contextlib.suppress(OSError):  # the empty log this call created: not left
            if created and opened.st_size == 0 and os.path.samestat(os.stat(real), opened):
                os.unlink(real)
        handle.close()
        raise


def _open_locked(
    path: Path, real: Path, handle: BinaryIO, meta: dict[str, Any], resume: bool, stacklevel: int
) -> OpenLog:
    meta_path = settings_path(real)
    clean_stale_temporaries(real.parent, [meta_path.name])  # settings half-written by kills
    handle.seek(0)
    data = handle.read(MAX_LOG_BYTES)
    if data and not resume:
        raise FileExistsError(
            f"{path} exists; pass resume=True to continue it, or choose another log"
        )
    rows, valid = parse_log(data, str(path))
    layout = "cohen" if meta["columns"] == "cohen" else "v2"
    if rows:
        old = read_settings(real)
        if old is None:
            raise ValueError(
                f"{path} holds certificates but its settings file {meta_path} is missing, so "
                "what they were certified with is unknown; resuming is refused. Use another log."
            )
        if "format_version" not in old:  # format 1 (release 0.1): resumed in format 1
            if meta["columns"] != "peftsmoothing":  # its rows' layout: checked below
                raise ValueError(f"{path} is a format-1 log: it can only be resumed as one")
            layout = "v1"
        elif old["format_version"] != FORMAT_VERSION:
            raise ValueError(f"{meta_path}: unknown format_version {old['format_version']!r}")
        diff = settings_diff(old, {k: meta[k] for k in V1_KEYS} if layout == "v1" else meta)
        if diff:
            raise ValueError(
                f"{path} was written with other settings or another model: "
                f"{', '.join(diff)}; resuming would mix certificates of different settings "
                "or models. Use another log."
            )
        if rows[0].layout != layout:
            raise ValueError(f"{path}: its rows are not in the layout its settings name")
        if layout == "v1":
            warnings.warn(
                f"{path} is a format-1 log: the data identity of its rows cannot be verified, "
                "so make sure you resume it on the same dataset, split and preprocessing",
                stacklevel=stacklevel,
            )
            ns = {r.n for r in rows}
            if ns != {meta["n"]}:
                raise ValueError(f"{path} holds rows with n={sorted(ns)}, but n={meta['n']} now")
    if valid < len(data):
        warnings.warn(
            f"{path}: dropping a torn last line ({len(data) - valid} bytes, from a run that "
            "was interrupted); that image is certified again",
            stacklevel=stacklevel,
        )
    if not rows:  # nothing certified yet: start afresh with the new settings
        _check_replaceable(meta_path)
        atomic_write(meta_path, (json.dumps(meta, indent=2) + "\n").encode())
        handle.truncate(0)
        handle.write(HEADERS[layout])  # O_APPEND: at the end, which is the start
    elif valid < len(data):
        handle.truncate(valid)
    handle.flush()
    os.fsync(handle.fileno())
    fsync_dir(real.parent)
    return OpenLog(real, handle, layout, rows)


def _check_replaceable(meta_path: Path) -> None:
    """Refuse to replace ``meta_path`` unless it is missing or a log's settings file: a new
    log must never overwrite a file of someone else's (e.g. a saved model's
    ``peftsmoothing.json`` beside ``--out D/peftsmoothing``)."""
    if not os.path.lexists(meta_path):
        return
    with contextlib.suppress(OSError, ValueError):  # unreadable, too large, not ours: theirs
        if meta_path.is_file() and not meta_path.is_symlink():
            load_settings_file(meta_path)
            return
    raise FileExistsError(
        f"{meta_path} exists and is not the settings file of a certification log, and a "
        "new log would replace it; choose another log path (or move that file)"
    )


def check_identity(log: OpenLog, indices: Iterable[int], identity: Callable[[int], str]) -> None:
    """Check that every logged row among ``indices`` is of the same data as now: its
    ``image_sha256`` against ``identity(idx)`` (computed from the dataset). Rows without a data
    identity (format 1, Cohen's layout) are not checked.

    Raises:
        ValueError: Naming the first index whose image or label differs.
    """
    logged = {r.idx: r for r in log.rows if r.image_sha256 is not None}
    for idx in indices:
        row = logged.get(idx)
        if row is not None and identity(idx) != row.image_sha256:
            raise ValueError(
                f"{log.path}: image {idx} is not the image (or label) that was certified "
                f"into this log (image_sha256 {row.image_sha256}, now {identity(idx)}): "
                "another dataset, split or preprocessing. Use another log."
            )
