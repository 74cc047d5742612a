"""Rows of a certification log: the three layouts, ``LogRow``, parsing and row checks.

See ``peftsmoothing.report.certlog`` for the format as a whole.
"""

from __future__ import annotations

import datetime
import math
import os
import re
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Final

from ...core.stats import ABSTAIN, certified_radius, clopper_pearson_lower
from .settings import check_settings

LOG_COLUMNS: Final[tuple[str, ...]] = (
    "idx", "label", "predict", "radius", "correct", "pa_lower", "count", "n", "seconds",
    "alpha", "image_sha256",
)  # fmt: skip
"""Columns of a certification log of format 2 (tab-separated, one header line)."""

LOG_COLUMNS_V1: Final[tuple[str, ...]] = LOG_COLUMNS[:9]
"""Columns of a format-1 log (release 0.1): read, and resumed in that format."""

COHEN_COLUMNS: Final[tuple[str, ...]] = ("idx", "label", "predict", "radius", "correct", "time")
"""Columns of Cohen et al.'s ``certify.py`` log; ``time`` is seconds or a ``timedelta`` text."""

_LAYOUTS: Final[dict[str, tuple[str, ...]]] = {
    "v2": LOG_COLUMNS, "v1": LOG_COLUMNS_V1, "cohen": COHEN_COLUMNS,
}  # fmt: skip
HEADERS: Final[dict[str, bytes]] = {k: ("\t".join(v) + "\n").encode() for k, v in _LAYOUTS.items()}
MAX_LOG_BYTES: Final[int] = 2 * 2**30
"""The largest log that is read (2 GiB, some 20 million rows); a larger one is refused unread."""

_SHA_RE: Final = re.compile(r"[0-9a-f]{16}")
_INT64_MAX: Final[int] = 2**63 - 1  # reports hold the integer columns as int64
_TIMEDELTA_RE: Final = re.compile(r"(?:(-?\d+) days?, )?(\d+):(\d\d):(\d\d(?:\.\d+)?)")


def _parse_time(text: str) -> float:
    """Seconds from Cohen's ``time`` column: a float, or ``str(datetime.timedelta)``."""
    match = _TIMEDELTA_RE.fullmatch(text)
    if match is None:
        return float(text)
    days, hours, minutes, seconds = match.groups()
    try:
        return int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except OverflowError:
        raise ValueError(f"time {text!r} out of range") from None


@dataclass(frozen=True)
class LogRow:
    """One row of a certification log (see ``LOG_COLUMNS``).

    ``alpha`` (the failure probability at which ``pa_lower`` holds) and ``image_sha256`` (the
    row's data identity, ``peftsmoothing.core.fingerprint.image_fingerprint``) are ``None`` in
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
            layout: ``"v2"``, ``"v1"`` or ``"cohen"``; default: ``layout``.
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
        """The fields in ``LOG_COLUMNS`` order."""
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
        if max(self.idx, self.label, self.predict, self.count, self.n) > _INT64_MAX:
            raise ValueError(f"idx, label, predict, count or n above {_INT64_MAX} (int64)")
        if self.correct not in (0, 1) or self.idx < 0 or self.label < 0 or self.predict < -1:
            raise ValueError("inconsistent values")
        if not (math.isfinite(self.radius) and self.radius >= 0):
            raise ValueError("radius out of range")
        if not (math.isfinite(self.seconds) and self.seconds >= 0):
            raise ValueError("seconds out of range")
        if cohen:  # a row of Cohen et al.'s layout: no counts, no bound
            if self.count != 0 or not math.isnan(self.pa_lower) or self.alpha is not None:
                raise ValueError("inconsistent values")
            return
        if self.n < 1 or not 0 <= self.count <= self.n or not 0 <= self.pa_lower <= 1:
            raise ValueError("inconsistent values, or pa_lower out of range")
        if self.alpha is not None and not 0 < self.alpha < 1:
            raise ValueError("alpha out of range")


def check_log_file(path: str | os.PathLike[str], status: os.stat_result) -> None:
    """Refuse a log that is not a regular file (``status``: its ``stat``, links followed), or
    that is larger than ``MAX_LOG_BYTES``: a link to ``/dev/zero`` would be read without end,
    a FIFO would block.

    Raises:
        ValueError: One line naming the file and what it is.

    Examples:
        >>> import os
        >>> check_log_file("/dev/null", os.stat("/dev/null"))
        Traceback (most recent call last):
        ...
        ValueError: /dev/null is not a regular file (a device): a certification log is one
    """
    if not stat.S_ISREG(status.st_mode):
        kinds = {stat.S_ISDIR: "a folder", stat.S_ISFIFO: "a FIFO", stat.S_ISSOCK: "a socket"}
        kind = next((k for test, k in kinds.items() if test(status.st_mode)), "a device")
        raise ValueError(f"{path} is not a regular file ({kind}): a certification log is one")
    if status.st_size > MAX_LOG_BYTES:
        raise ValueError(
            f"{path} is larger than 2 GiB ({status.st_size:,} bytes), more than a certification "
            "log holds (peftsmoothing.report.certlog.MAX_LOG_BYTES): refused"
        )


def read_log(path: str | os.PathLike[str]) -> bytes:
    """The bytes of a log, read only once it shows to be a regular file of at most
    ``MAX_LOG_BYTES`` (``check_log_file``; checked before it is opened, and on what was
    opened).

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: One line naming the file: not a regular file, or too large.

    Examples:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "log.tsv")
        >>> _ = open(path, "wb").write(HEADERS["v2"])
        >>> read_log(path) == HEADERS["v2"]
        True
    """
    check_log_file(path, os.stat(path))
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(descriptor, "rb") as file:
        check_log_file(path, os.fstat(descriptor))  # what was opened, if it changed meanwhile
        return file.read(MAX_LOG_BYTES)  # a log that grows meanwhile: its new last line is torn


def parse_rows(data: bytes, name: str) -> tuple[str | None, list[LogRow], int]:
    """``(layout, rows, valid_length)`` of a log's bytes (layout ``None``: empty or torn
    header); see ``parse_log``.

    Examples:
        >>> parse_rows(b"", "log.tsv")
        (None, [], 0)
    """
    layout = next((k for k, h in HEADERS.items() if data.startswith(h)), None)
    if layout is None:
        if any(h.startswith(data) for h in HEADERS.values()):
            return None, [], 0  # empty, or killed while writing the header
        first = data.split(b"\n", 1)[0].decode(errors="replace")
        raise ValueError(
            f"{name} is not a certification log: header {first!r}, expected "
            f"{HEADERS['v2'].decode().strip()!r} (or format 1's, or Cohen et al.'s "
            f"{HEADERS['cohen'].decode().strip()!r})"
        )
    rows: list[LogRow] = []
    pos = len(HEADERS[layout])
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
    return parse_rows(data, name)[1:]

def validate_rows(
    rows: Sequence[LogRow],
    name: str = "log",
    sigma: float | None = None,
    settings: Mapping[str, Any] | None = None,
) -> None:
    """Refuse rows no certification can have written; row ``i`` is on line ``i + 2`` of the log.

    The rules: ``correct == int(predict == label)``; an abstention (``predict == -1``) has
    radius 0; with ``sigma`` known, ``radius <= sigma * Phi^-1(pa_lower)`` (relative tolerance
    1e-9); ``pa_lower`` is the Clopper-Pearson bound of ``count`` in ``n`` at the row's
    ``alpha`` (relative tolerance 1e-9) and a prediction has ``pa_lower >= 0.5`` (CERTIFY
    abstains below). With the log's ``settings`` (their entries of their types,
    ``check_settings``): sigma comes from them, labels and predictions lie below
    ``num_classes``, indices below the dataset's ``size``, and each row's ``(n, alpha)`` is one
    the settings
    allow (fixed mode: their ``n`` and ``alpha``; sequential modes: one look's sample count and
    alpha). Rows that do not record alpha (format 1) are checked at the settings' alpha for
    their ``n``; rows of Cohen et al.'s layout (no counts) by the first two rules and, with
    settings, by the radius rule at the largest ``pa_lower`` the settings allow (every sample
    of the top class: ``alpha^(1/n)``).

    Raises:
        ValueError: Naming the file, the line and the rule of the first impossible row.

    Examples:
        >>> validate_rows([LogRow(0, 1, -1, 0.5, 0, 0.4, 4, 10, 1.0)], "x.tsv")
        Traceback (most recent call last):
        ...
        ValueError: x.tsv, line 2: an abstention (predict -1) has radius 0, got 0.5
        >>> settings = {"sigma": 0.5, "n": 10, "alpha": 0.001}
        >>> validate_rows([LogRow(0, 1, 1, 1000.0, 1, 1.0, 10, 10, 1.0)], "v1.tsv",
        ...               settings=settings)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: v1.tsv, line 2: pa_lower 1.0 is not the Clopper-Pearson bound of count 10 ...
    """
    settings = settings or {}
    check_settings(settings, f"{name}'s settings")
    if sigma is None and isinstance(settings.get("sigma"), (int, float)):
        sigma = float(settings["sigma"])
    classes = settings.get("num_classes")
    size = (settings.get("dataset") or {}).get("size")
    allowed = _allowed_looks(settings)
    for number, row in enumerate(rows, start=2):
        where = f"{name}, line {number}"
        if isinstance(size, int) and row.idx >= size:
            raise ValueError(
                f"{where}: idx {row.idx} is outside the {size} images of the settings' dataset"
            )
        if isinstance(classes, int) and not (
            0 <= row.label < classes and -1 <= row.predict < classes
        ):
            raise ValueError(
                f"{where}: label {row.label} or prediction {row.predict} outside the "
                f"{classes} classes of the settings"
            )
        if row.correct != int(row.predict == row.label):
            raise ValueError(
                f"{where}: correct must be int(predict == label), got correct={row.correct} "
                f"for predict={row.predict}, label={row.label}"
            )
        if row.predict == ABSTAIN and row.radius != 0:
            raise ValueError(f"{where}: an abstention (predict -1) has radius 0, got {row.radius}")
        if row.n == 0:  # Cohen et al.'s row: no counts; at best every sample was the top class
            best = max((a ** (1 / n) for n, a in allowed if n > 0), default=None)
            if best is not None:
                _check_radius(row, where, sigma, best, " (the most the settings' n and alpha give)")
            continue
        # the levels its pa_lower may be at: its own alpha, or (format 1) the settings' for n
        alphas = [row.alpha] if row.alpha is not None else [a for n, a in allowed if n == row.n]
        if row.alpha is None and allowed and not alphas:
            raise ValueError(
                f"{where}: n={row.n} is not a sample count the settings allow "
                f"({sorted(allowed)[:4]}...)"
            )
        _check_radius(row, where, sigma, row.pa_lower, "")
        if row.predict != ABSTAIN and row.pa_lower < 0.5:
            raise ValueError(f"{where}: a prediction needs pa_lower >= 0.5 (CERTIFY abstains "
                             f"below), got {row.pa_lower}")  # fmt: skip
        expected = [clopper_pearson_lower(row.count, row.n, a) for a in alphas]
        if alphas and not any(
            math.isclose(row.pa_lower, e, rel_tol=1e-9, abs_tol=1e-300) for e in expected
        ):
            raise ValueError(
                f"{where}: pa_lower {row.pa_lower} is not the Clopper-Pearson bound of "
                f"count {row.count} in n {row.n} at alpha {alphas[0]} ({expected[0]})"
            )
        if row.alpha is not None and allowed and (row.n, row.alpha) not in allowed:
            raise ValueError(
                f"{where}: n={row.n} at alpha={row.alpha} is not a sample count and level the "
                f"settings allow ({sorted(allowed)[:4]}...)"
            )


def _check_radius(row: LogRow, where: str, sigma: float | None, pa: float, note: str) -> None:
    """The radius rule: ``radius <= sigma * Phi^-1(pa)`` for a prediction, when sigma is
    known (``pa``: the row's ``pa_lower``, or the largest one possible)."""
    if sigma is None or row.predict == ABSTAIN:
        return
    bound = certified_radius(sigma, pa) if pa < 1 else math.inf
    if row.radius > max(bound, 0.0) * (1 + 1e-9):
        raise ValueError(
            f"{where}: radius {row.radius} exceeds sigma * Phi^-1(pa_lower) = {bound} "
            f"(sigma {sigma}, pa_lower {pa}{note})"
        )


def _allowed_looks(settings: Mapping[str, Any]) -> set[tuple[int, float]]:
    """The ``(n, alpha)`` pairs a log's rows may have: fixed n, or one look of the schedule."""
    sequential = settings.get("sequential")
    if isinstance(sequential, Mapping):
        looks, alphas = sequential.get("looks"), sequential.get("look_alphas")
        if isinstance(looks, list) and isinstance(alphas, list):
            return {(int(n), float(a)) for n, a in zip(looks, alphas, strict=False)}
        return set()
    n, alpha = settings.get("n"), settings.get("alpha")
    if isinstance(n, int) and isinstance(alpha, (int, float)):
        return {(n, float(alpha))}
    return set()
