"""The certification log: one tab-separated row per certified image, and its settings file.

A log is written by :meth:`peftsmoothing.SmoothedClassifier.certify_dataset` and read by
:class:`peftsmoothing.CertificationReport`. It is append-only and crash-safe
(docs/design.md):

- ``<log>`` holds one header line (:data:`LOG_COLUMNS`) and one :class:`LogRow` per image,
  each row flushed and fsynced as it is written. A process killed mid-write leaves at most a
  torn last line, which :func:`parse_log` recognises and resuming truncates.
- ``<log>.json`` holds the settings the rows were certified with (:func:`log_settings`);
  resuming with other settings, or another model, is refused.
- ``<log>.lock`` is held (``flock``) by the one process appending to the log.

The format is that of the 0.1 release (``tests/fixtures/certify.tsv``); changing it is a
versioned change, not a refactoring.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Final

from ._io import atomic_write, fsync_dir

__all__ = [
    "LOG_COLUMNS",
    "SETTINGS_FORMAT",
    "LogRow",
    "log_settings",
    "parse_log",
]

LOG_COLUMNS: Final[tuple[str, ...]] = (
    "idx", "label", "predict", "radius", "correct", "pa_lower", "count", "n", "seconds",
)  # fmt: skip
"""Columns of a certification log (tab-separated, one header line)."""

SETTINGS_FORMAT: Final[str] = "peftsmoothing-certify-log"
"""The ``"format"`` entry of a log's settings file (``<log>.json``)."""

_LOG_HEADER: Final[str] = "\t".join(LOG_COLUMNS) + "\n"


@dataclass(frozen=True)
class LogRow:
    """One row of a certification log (see :data:`LOG_COLUMNS`).

    Examples:
        >>> row = LogRow(7, 3, 3, 0.5, 1, 0.84, 99, 100, 1.25)
        >>> LogRow.from_line(row.to_line()) == row
        True
    """

    idx: int
    label: int
    predict: int
    radius: float
    correct: int
    pa_lower: float
    count: int
    n: int
    seconds: float

    def to_line(self) -> str:
        """The row as one tab-separated line, newline included (floats round-trip exactly)."""
        values = [repr(float(v)) if isinstance(v, float) else str(int(v)) for v in self.values()]
        return "\t".join(values) + "\n"

    def values(self) -> tuple[int | float, ...]:
        """The fields in :data:`LOG_COLUMNS` order."""
        return tuple(getattr(self, f.name) for f in fields(self))

    @classmethod
    def from_line(cls, line: str) -> LogRow:
        """Parse one line; raise ``ValueError`` if it is not a complete, valid row."""
        parts = line.rstrip("\n").split("\t")
        if len(parts) != len(LOG_COLUMNS):
            raise ValueError(f"expected {len(LOG_COLUMNS)} tab-separated fields, got {len(parts)}")
        kinds = [f.type for f in fields(cls)]
        values: list[Any] = [
            float(p) if kind in ("float", float) else int(p)
            for p, kind in zip(parts, kinds, strict=True)
        ]
        row = cls(*values)
        if row.n < 1 or not 0 <= row.count <= row.n or row.correct not in (0, 1):
            raise ValueError("inconsistent values")
        if not (math.isfinite(row.radius) and row.radius >= 0 and 0 <= row.pa_lower <= 1):
            raise ValueError("radius or pa_lower out of range")
        return row


def parse_log(data: bytes, name: str = "log") -> tuple[list[LogRow], int]:
    """Parse the bytes of a certification log.

    A process killed while appending can leave a torn last line (no trailing newline, or, after
    a power loss, a garbled final line). That line is not returned; the second element of the
    result is the length of the valid prefix, so the caller can truncate the file there.

    Args:
        data: The file's bytes.
        name: The file name, for error messages.

    Returns:
        ``(rows, valid_length)``; an empty or torn-header file gives ``([], 0)``.

    Raises:
        ValueError: If the header is not the certification-log header, or a line other than
            the last one is malformed.

    Examples:
        >>> text = "\\t".join(LOG_COLUMNS) + "\\n" + "0\\t1\\t1\\t0.5\\t1\\t0.9\\t99\\t100\\t0.1\\n"
        >>> rows, size = parse_log((text + "1\\t2\\t").encode())
        >>> [r.idx for r in rows], size == len(text)
        ([0], True)
    """
    header = _LOG_HEADER.encode()
    if len(data) < len(header):
        if header.startswith(data):
            return [], 0  # empty, or killed while writing the header
        raise ValueError(f"{name} is not a certification log: bad header")
    if not data.startswith(header):
        first = data.split(b"\n", 1)[0].decode(errors="replace")
        raise ValueError(
            f"{name} is not a certification log: header {first!r}, expected "
            f"{_LOG_HEADER.strip()!r}"
        )
    rows: list[LogRow] = []
    pos = len(header)
    lines = data[pos:].split(b"\n")
    complete, tail = lines[:-1], lines[-1]
    for number, raw in enumerate(complete):
        try:
            rows.append(LogRow.from_line(raw.decode()))
        except (ValueError, UnicodeDecodeError) as err:
            if number == len(complete) - 1 and not tail:
                return rows, pos  # a garbled final line: treated as torn
            raise ValueError(
                f"{name}: line {number + 2} is malformed ({err}); only the last line of a log "
                "can be torn, so this log is corrupted"
            ) from None
        pos += len(raw) + 1
    return rows, pos


def log_settings(
    *,
    sigma: float,
    n0: int,
    n: int,
    alpha: float,
    seed: int,
    num_classes: int,
    precision: str,
    model_sha256: str,
) -> dict[str, Any]:
    """The settings file (``<log>.json``) of a log: what its rows were certified with.

    Resuming a log compares every entry but ``"format"`` with the settings of the new run.

    Args:
        sigma: Noise level of the smoothed classifier.
        n0: Selection samples per image.
        n: Estimation samples per image.
        alpha: Failure probability of each certificate.
        seed: Master seed of the per-image seeds.
        num_classes: Number of classes.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"``.
        model_sha256: :func:`peftsmoothing.fingerprint.model_fingerprint` of the base model.

    Returns:
        The settings, in the order they are written.

    Examples:
        >>> s = log_settings(sigma=0.5, n0=100, n=100000, alpha=0.001, seed=0, num_classes=10,
        ...                  precision="fp32", model_sha256="0" * 64)
        >>> list(s)[:3], s["format"] == SETTINGS_FORMAT
        (['format', 'sigma', 'n0'], True)
    """
    return {
        "format": SETTINGS_FORMAT,
        "sigma": sigma,
        "n0": n0,
        "n": n,
        "alpha": alpha,
        "seed": seed,
        "num_classes": num_classes,
        "precision": precision,
        "model_sha256": model_sha256,
    }


def _lock_log(path: Path) -> Any:
    """An exclusive advisory lock on ``<log>.lock`` held until the returned file is closed, so
    that two processes never append to one log (POSIX; a no-op where ``fcntl`` is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = open(path.with_name(path.name + ".lock"), "a")  # noqa: SIM115
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise RuntimeError(
            f"another process is certifying into {path}; give each process its own log "
            "(e.g. shard=(i, k) with one log per shard)"
        ) from None
    return lock


def _open_log(
    path: Path, meta: dict[str, Any], resume: bool, stacklevel: int = 3
) -> tuple[Any, list[LogRow]]:
    """Open ``path`` for appending rows; return the handle and the rows already there.

    The caller holds the log's lock (:func:`_lock_log`) while it reads and appends. A torn
    last line is truncated with a ``UserWarning`` (``stacklevel`` counts from this function,
    so that the warning points at the user's call)."""
    meta_path = path.with_name(path.name + ".json")
    exists = path.exists() and path.stat().st_size > 0
    if exists and not resume:
        raise FileExistsError(
            f"{path} exists; pass resume=True to continue it, or choose another log"
        )
    rows: list[LogRow] = []
    if exists:
        if meta_path.exists():
            old = json.loads(meta_path.read_text())
            diff = [
                f"{k}={old.get(k)!r} (now {meta[k]!r})"
                for k in meta
                if k != "format" and old.get(k) != meta[k]
            ]
            if diff:
                raise ValueError(
                    f"{path} was written with other settings or another model: "
                    f"{', '.join(diff)}; resuming would mix certificates of different settings "
                    "or models. Use another log."
                )
        data = path.read_bytes()
        rows, valid = parse_log(data, str(path))
        if valid < len(data):
            warnings.warn(
                f"{path}: dropping a torn last line ({len(data) - valid} bytes, from a run that "
                "was interrupted); that image is certified again",
                UserWarning,
                stacklevel=stacklevel,
            )
            with open(path, "r+b") as f:
                f.truncate(valid)
                f.flush()
                os.fsync(f.fileno())
        ns = {r.n for r in rows}
        if ns and ns != {meta["n"]}:
            raise ValueError(f"{path} holds rows with n={sorted(ns)}, but n={meta['n']} now")
    path.parent.mkdir(parents=True, exist_ok=True)
    if not exists or not meta_path.exists():
        atomic_write(meta_path, (json.dumps(meta, indent=2) + "\n").encode())
    handle = open(path, "a", encoding="utf-8", newline="\n")  # noqa: SIM115
    if handle.tell() == 0:
        handle.write(_LOG_HEADER)
        handle.flush()
        os.fsync(handle.fileno())
        fsync_dir(path.parent)
    return handle, rows
