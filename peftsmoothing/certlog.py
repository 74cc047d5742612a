"""The certification log: one tab-separated row per certified image, and its settings file.

A log is written by :func:`peftsmoothing.runner.certify_dataset` and read by
:class:`peftsmoothing.CertificationReport`. It is append-only and crash-safe
(docs/design.md, "Formats"; docs/certification.md, "The log"):

- ``<log>`` holds one header line and one :class:`LogRow` per image, each row flushed and
  fsynced as it is written. A process killed mid-write leaves at most a torn last line, which
  :func:`parse_log` recognises and resuming truncates.
- ``<log>.json`` (next to the log's resolved path) holds the settings the rows were certified
  with (:func:`log_settings`); resuming with other settings, another model or other data is
  refused (:func:`open_log`).
- The process appending to a log holds an exclusive ``flock`` on the log file itself, so a
  second process, also through a symbolic link, is refused.

Three layouts are read (:func:`parse_log`): format 2 (:data:`LOG_COLUMNS`, written now),
format 1 (:data:`LOG_COLUMNS_V1`, release 0.1: still read and resumed in its own format) and
Cohen et al.'s (:data:`COHEN_COLUMNS`, locuslab/smoothing), which is also written on request.
Changing a layout is a versioned change, not a refactoring.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, BinaryIO, Final

from ._io import atomic_write, fsync_dir

__all__ = [
    "COHEN_COLUMNS",
    "FORMAT_VERSION",
    "LOG_COLUMNS",
    "LOG_COLUMNS_V1",
    "LOG_FORMATS",
    "SETTINGS_FORMAT",
    "LogRow",
    "OpenLog",
    "check_identity",
    "log_settings",
    "open_log",
    "parse_log",
    "read_settings",
    "settings_diff",
]

LOG_COLUMNS: Final[tuple[str, ...]] = (
    "idx", "label", "predict", "radius", "correct", "pa_lower", "count", "n", "seconds",
    "alpha", "image_sha256",
)  # fmt: skip
"""Columns of a certification log of format 2 (tab-separated, one header line)."""

LOG_COLUMNS_V1: Final[tuple[str, ...]] = LOG_COLUMNS[:9]
"""Columns of a format-1 log (release 0.1): read, and resumed in that format."""

COHEN_COLUMNS: Final[tuple[str, ...]] = ("idx", "label", "predict", "radius", "correct", "time")
"""Columns of Cohen et al.'s ``certify.py`` log; ``time`` is seconds or a ``timedelta`` text."""

FORMAT_VERSION: Final[int] = 2
"""The ``"format_version"`` of the settings this code writes (format 1 has none)."""

LOG_FORMATS: Final[tuple[str, ...]] = ("peftsmoothing", "cohen")
"""Row layouts ``certify_dataset(log_format=...)`` writes (the settings' ``"columns"``)."""

SETTINGS_FORMAT: Final[str] = "peftsmoothing-certify-log"
"""The ``"format"`` entry of a log's settings file (``<log>.json``)."""

_LAYOUTS: Final[dict[str, tuple[str, ...]]] = {
    "v2": LOG_COLUMNS, "v1": LOG_COLUMNS_V1, "cohen": COHEN_COLUMNS,
}  # fmt: skip
_HEADERS: Final[dict[str, bytes]] = {k: ("\t".join(v) + "\n").encode() for k, v in _LAYOUTS.items()}
_V1_KEYS: Final[tuple[str, ...]] = (
    "sigma", "n0", "n", "alpha", "seed", "num_classes", "precision", "model_sha256",
)  # fmt: skip
_SHA_RE: Final = re.compile(r"[0-9a-f]{16}")
_TIMEDELTA_RE: Final = re.compile(r"(?:(-?\d+) days?, )?(\d+):(\d\d):(\d\d(?:\.\d+)?)")


def _parse_time(text: str) -> float:
    """Seconds from Cohen's ``time`` column: a float, or ``str(datetime.timedelta)``."""
    match = _TIMEDELTA_RE.fullmatch(text)
    if match is None:
        return float(text)
    days, hours, minutes, seconds = match.groups()
    return int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + float(seconds)


@dataclass(frozen=True)
class LogRow:
    """One row of a certification log (see :data:`LOG_COLUMNS`).

    ``alpha`` (the failure probability at which ``pa_lower`` holds) and ``image_sha256`` (the
    row's data identity, :func:`peftsmoothing.fingerprint.image_fingerprint`) are ``None`` in
    rows read from format-1 and Cohen logs. A row of a Cohen log has ``pa_lower = nan`` and
    ``count = n = 0``: it records no counts.

    Examples:
        >>> row = LogRow(7, 3, 3, 0.5, 1, 0.84, 99, 100, 1.25)
        >>> LogRow.from_line(row.to_line()) == row
        True
        >>> LogRow.from_line("7\\t3\\t3\\t0.5\\t1\\t0:00:01.250000").seconds
        1.25
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
    alpha: float | None = None
    image_sha256: str | None = None

    @property
    def layout(self) -> str:
        """``"cohen"`` (no counts), ``"v2"`` (alpha and data identity) or ``"v1"``."""
        if self.n == 0:
            return "cohen"
        return "v1" if self.alpha is None and self.image_sha256 is None else "v2"

    def to_line(self, layout: str | None = None) -> str:
        """The row as one tab-separated line, newline included (floats round-trip exactly).

        Args:
            layout: ``"v2"``, ``"v1"`` or ``"cohen"``; default: :attr:`layout`.
        """
        layout = self.layout if layout is None else layout
        if layout == "cohen":
            time = str(datetime.timedelta(seconds=self.seconds))
            values: list[Any] = [*self.values()[:5], time]
        elif layout in ("v1", "v2"):
            values = list(self.values()[: len(_LAYOUTS[layout])])
            if layout == "v2" and (self.alpha is None or self.image_sha256 is None):
                raise ValueError("a format-2 row needs alpha and image_sha256")
        else:
            raise ValueError(f"unknown log layout {layout!r}")
        text = [repr(float(v)) if isinstance(v, float) else str(v) for v in values]
        return "\t".join(text) + "\n"

    def values(self) -> tuple[Any, ...]:
        """The fields in :data:`LOG_COLUMNS` order."""
        return tuple(getattr(self, f.name) for f in fields(self))

    def certificate(self) -> tuple[Any, ...]:
        """The fields but ``seconds``: what two certifications of one image must agree on."""
        return tuple(v for f, v in zip(fields(self), self.values(), strict=True)
                     if f.name != "seconds")  # fmt: skip

    @classmethod
    def from_line(cls, line: str) -> LogRow:
        """Parse one line of any layout (told by its number of fields); raise ``ValueError`` if
        it is not a complete, valid row."""
        parts = line.rstrip("\n").split("\t")
        if len(parts) == len(COHEN_COLUMNS):
            idx, label, predict, correct = (int(parts[i]) for i in (0, 1, 2, 4))
            row = cls(idx, label, predict, float(parts[3]), correct, math.nan, 0, 0,
                      _parse_time(parts[5]))  # fmt: skip
        elif len(parts) in (len(LOG_COLUMNS_V1), len(LOG_COLUMNS)):
            kinds = [f.type for f in fields(cls)]
            values: list[Any] = [
                float(p) if kind in ("float", float) else int(p)
                for p, kind in zip(parts[:9], kinds, strict=False)
            ]
            if len(parts) == len(LOG_COLUMNS):
                if not _SHA_RE.fullmatch(parts[10]):
                    raise ValueError(f"image_sha256 must be 16 hex digits, got {parts[10]!r}")
                values += [float(parts[9]), parts[10]]
            row = cls(*values)
        else:
            raise ValueError(f"expected {len(LOG_COLUMNS)} tab-separated fields, got {len(parts)}")
        row._check(cohen=len(parts) == len(COHEN_COLUMNS))
        return row

    def _check(self, cohen: bool) -> None:
        if self.correct not in (0, 1) or self.idx < 0 or self.label < 0 or self.predict < -1:
            raise ValueError("inconsistent values")
        if not (math.isfinite(self.radius) and self.radius >= 0 and self.seconds >= 0):
            raise ValueError("radius or seconds out of range")
        if cohen:  # a row of Cohen et al.'s layout: no counts, no bound
            if self.count != 0 or not math.isnan(self.pa_lower) or self.alpha is not None:
                raise ValueError("inconsistent values")
            return
        if self.n < 1 or not 0 <= self.count <= self.n or not 0 <= self.pa_lower <= 1:
            raise ValueError("inconsistent values, or pa_lower out of range")
        if self.alpha is not None and not 0 < self.alpha < 1:
            raise ValueError("alpha out of range")


def _parse(data: bytes, name: str) -> tuple[str | None, list[LogRow], int]:
    """``(layout, rows, valid_length)`` of a log's bytes (layout ``None``: empty or torn
    header); see :func:`parse_log`."""
    layout = next((k for k, h in _HEADERS.items() if data.startswith(h)), None)
    if layout is None:
        if any(h.startswith(data) for h in _HEADERS.values()):
            return None, [], 0  # empty, or killed while writing the header
        first = data.split(b"\n", 1)[0].decode(errors="replace")
        raise ValueError(
            f"{name} is not a certification log: header {first!r}, expected "
            f"{_HEADERS['v2'].decode().strip()!r} (or format 1's, or Cohen et al.'s "
            f"{_HEADERS['cohen'].decode().strip()!r})"
        )
    rows: list[LogRow] = []
    pos = len(_HEADERS[layout])
    lines = data[pos:].split(b"\n")
    complete, tail = lines[:-1], lines[-1]
    for number, raw in enumerate(complete):
        try:
            parts = raw.count(b"\t") + 1
            if parts != len(_LAYOUTS[layout]):
                raise ValueError(f"expected {len(_LAYOUTS[layout])} tab-separated fields, got "
                                 f"{parts}")  # fmt: skip
            rows.append(LogRow.from_line(raw.decode()))
        except (ValueError, UnicodeDecodeError) as err:
            if number == len(complete) - 1 and not tail:
                return layout, rows, pos  # a garbled final line: treated as torn
            raise ValueError(
                f"{name}: line {number + 2} is malformed ({err}); only the last line of a log "
                "can be torn, so this log is corrupted"
            ) from None
        pos += len(raw) + 1
    return layout, rows, pos


def parse_log(data: bytes, name: str = "log") -> tuple[list[LogRow], int]:
    """Parse the bytes of a certification log (format 2, format 1 or Cohen et al.'s).

    A process killed while appending can leave a torn last line (no trailing newline, or, after
    a power loss, a garbled final line). That line is not returned; the second element of the
    result is the length of the valid prefix, so the caller can truncate the file there.

    Args:
        data: The file's bytes.
        name: The file name, for error messages.

    Returns:
        ``(rows, valid_length)``; an empty or torn-header file gives ``([], 0)``.

    Raises:
        ValueError: If the header is not a certification-log header, or a line other than
            the last one is malformed.

    Examples:
        >>> text = "\\t".join(LOG_COLUMNS_V1) + "\\n0\\t1\\t1\\t0.5\\t1\\t0.9\\t99\\t100\\t0.1\\n"
        >>> rows, size = parse_log((text + "1\\t2\\t").encode())
        >>> [r.idx for r in rows], size == len(text)
        ([0], True)
        >>> cohen = "\\t".join(COHEN_COLUMNS) + "\\n0\\t1\\t-1\\t0.0\\t0\\t2.5\\n"
        >>> [(r.predict, r.seconds, r.n) for r in parse_log(cohen.encode())[0]]
        [(-1, 2.5, 0)]
    """
    return _parse(data, name)[1:]


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
    columns: str = "peftsmoothing",
    dataset: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The settings file (``<log>.json``) of a format-2 log: what its rows were certified with.

    Resuming a log compares every entry but ``"format"`` with the settings of the new run
    (:func:`settings_diff`).

    Args:
        sigma: Noise level of the smoothed classifier.
        n0: Selection samples per image.
        n: Estimation samples per image (the most any row draws).
        alpha: Failure probability of each certificate.
        seed: Master seed of the per-image seeds.
        num_classes: Number of classes.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"``.
        model_sha256: :func:`peftsmoothing.fingerprint.model_fingerprint` of the base model.
        columns: The row layout, one of :data:`LOG_FORMATS`.
        dataset: What identifies the data: ``{"size": len(dataset), ...}`` (name, split,
            preprocessing; not paths, which are not identity).

    Returns:
        The settings, in the order they are written.

    Examples:
        >>> s = log_settings(sigma=0.5, n0=100, n=100000, alpha=0.001, seed=0, num_classes=10,
        ...                  precision="fp32", model_sha256="0" * 64, dataset={"size": 10})
        >>> list(s)[:5], s["format"] == SETTINGS_FORMAT
        (['format', 'format_version', 'mode', 'columns', 'sigma'], True)
    """
    if columns not in LOG_FORMATS:
        raise ValueError(f"log_format must be one of {', '.join(LOG_FORMATS)}, got {columns!r}")
    return {
        "format": SETTINGS_FORMAT,
        "format_version": FORMAT_VERSION,
        "mode": "fixed",
        "columns": columns,
        "sigma": sigma,
        "n0": n0,
        "n": n,
        "alpha": alpha,
        "seed": seed,
        "num_classes": num_classes,
        "precision": precision,
        "model_sha256": model_sha256,
        "dataset": dict(dataset or {}),
    }


def settings_diff(
    old: Mapping[str, Any], new: Mapping[str, Any], ignore: Iterable[str] = ("format",)
) -> list[str]:
    """The entries on which two settings differ, as ``"key=old (now new)"`` (nested dicts by
    ``"key.sub"``; a missing entry is ``None``).

    Examples:
        >>> settings_diff({"n": 10, "dataset": {"split": "test"}},
        ...               {"n": 10, "dataset": {"split": "train"}})
        ["dataset.split='test' (now 'train')"]
    """
    skip = set(ignore)
    out: list[str] = []
    for key in [*old, *(k for k in new if k not in old)]:
        if key in skip:
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += [f"{key}.{d}" for d in settings_diff(a, b, ())]
        elif a != b:
            out.append(f"{key}={a!r} (now {b!r})")
    return out


def settings_path(log: str | os.PathLike[str]) -> Path:
    """The settings file of a log: ``<resolved log path>.json`` (a link reaches the target's)."""
    path = Path(os.path.realpath(log))
    return path.with_name(path.name + ".json")


def read_settings(log: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The settings of a log (:func:`settings_path`), or ``None`` when it has no settings file.

    Raises:
        ValueError: If the file is not a JSON object of our format.
    """
    path = settings_path(log)
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(value, dict) or value.get("format") != SETTINGS_FORMAT:
        raise ValueError(f"{path} is not the settings file of a certification log")
    return value


def _lock_log(path: Path) -> BinaryIO:
    """Open the log (created if missing) and take an exclusive ``flock`` on that descriptor,
    held until it is closed, so that two processes never append to one log, also through a
    symbolic link (POSIX; no lock where ``fcntl`` is missing)."""
    real = Path(os.path.realpath(path))
    real.parent.mkdir(parents=True, exist_ok=True)
    handle = open(real, "a+b")  # noqa: SIM115
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return handle
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise RuntimeError(
            f"another process is certifying into {path}; give each process its own log "
            "(e.g. shard=(i, k) with one log per shard)"
        ) from None
    return handle


@dataclass
class OpenLog:
    """A log opened for appending by :func:`open_log`; holds its lock until :meth:`close`."""

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

    - The lock is taken first (:func:`_lock_log`); everything below happens under it.
    - A log with rows must have its settings file, and they must equal ``settings``; a log with
      only a header (or nothing) takes the new settings.
    - A format-1 log (settings without ``format_version``) is compared on format 1's keys and
      resumed in format 1, with a ``UserWarning``: its rows carry no data identity.
    - A torn last line is truncated with a ``UserWarning`` (``stacklevel`` counts from this
      function, so that the warning points at the user's call).

    Checking the rows' data identity needs the dataset: see :func:`check_identity`.

    Raises:
        FileExistsError: If the log is not empty and ``resume`` is false.
        ValueError: For other settings, a missing settings file, or a corrupted log.
        RuntimeError: If another process holds the log.
    """
    handle = _lock_log(Path(path))
    try:
        return _open_locked(Path(path), handle, settings, resume, stacklevel + 1)
    except BaseException:
        handle.close()
        raise


def _open_locked(
    path: Path, handle: BinaryIO, meta: dict[str, Any], resume: bool, stacklevel: int
) -> OpenLog:
    real = Path(os.path.realpath(path))
    meta_path = settings_path(real)
    handle.seek(0)
    data = handle.read()
    if data and not resume:
        raise FileExistsError(
            f"{path} exists; pass resume=True to continue it, or choose another log"
        )
    found, rows, valid = _parse(data, str(path))
    new_layout = "cohen" if meta["columns"] == "cohen" else "v2"
    layout = new_layout
    if rows:
        old = read_settings(real)
        if old is None:
            raise ValueError(
                f"{path} holds certificates but its settings file {meta_path} is missing, so "
                "what they were certified with is unknown; resuming is refused. Use another log."
            )
        if "format_version" not in old:  # format 1 (release 0.1)
            if found != "v1" or meta["columns"] != "peftsmoothing":
                raise ValueError(f"{path} is a format-1 log: it can only be resumed as one")
            diff = settings_diff(old, {k: meta[k] for k in _V1_KEYS}, ignore=("format",))
            layout = "v1"
        elif old["format_version"] == FORMAT_VERSION:
            diff = settings_diff(old, meta)
            if not diff and found != new_layout:
                raise ValueError(f"{path}: its rows are not in the layout its settings name")
        else:
            raise ValueError(f"{meta_path}: unknown format_version {old['format_version']!r}")
        if diff:
            raise ValueError(
                f"{path} was written with other settings or another model: "
                f"{', '.join(diff)}; resuming would mix certificates of different settings "
                "or models. Use another log."
            )
        if layout == "v1":
            warnings.warn(
                f"{path} is a format-1 log: the data identity of its rows cannot be verified, "
                "so make sure you resume it on the same dataset, split and preprocessing",
                UserWarning,
                stacklevel=stacklevel,
            )
            ns = {r.n for r in rows}
            if ns != {meta["n"]}:
                raise ValueError(f"{path} holds rows with n={sorted(ns)}, but n={meta['n']} now")
    if valid < len(data):
        warnings.warn(
            f"{path}: dropping a torn last line ({len(data) - valid} bytes, from a run that "
            "was interrupted); that image is certified again",
            UserWarning,
            stacklevel=stacklevel,
        )
    if not rows:  # nothing certified yet: start afresh with the new settings
        valid = 0
        atomic_write(meta_path, (json.dumps(meta, indent=2) + "\n").encode())
    if valid < len(data):
        handle.truncate(valid)
        handle.flush()
        os.fsync(handle.fileno())
    handle.seek(0, os.SEEK_END)
    if handle.tell() == 0:
        handle.write(_HEADERS[layout])
        handle.flush()
        os.fsync(handle.fileno())
        fsync_dir(real.parent)
    return OpenLog(real, handle, layout, rows)


def check_identity(
    log: OpenLog, indices: Iterable[int], identity: Callable[[int], str]
) -> None:
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
