"""Rows of a certification log: the three layouts, ``LogRow``, parsing and row checks.

See ``peftsmoothing.report.certlog`` for the format as a whole.
"""

from __future__ import annotations

import datetime
import math
import os
import re
import stat
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import astuple, dataclass, replace
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


#: How each field of ``LOG_COLUMNS`` is read from its text.
_PARSERS: Final = (int, int, int, float, int, float, int, int, float, float, str)


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
        if layout not in _LAYOUTS:
            raise ValueError(f"unknown log layout {layout!r}")
        values: list[Any] = list(self.values()[: len(_LAYOUTS[layout])])
        if layout == "cohen":  # Cohen et al.'s time where pa_lower stands
            values[5] = str(datetime.timedelta(seconds=self.seconds))
        elif None in values:
            raise ValueError("a format-2 row needs alpha and image_sha256")
        text = [repr(float(v)) if isinstance(v, float) else str(v) for v in values]
        return "\t".join(text) + "\n"

    def values(self) -> tuple[Any, ...]:
        """The fields in ``LOG_COLUMNS`` order."""
        return astuple(self)

    def certificate(self) -> tuple[Any, ...]:
        """The fields but ``seconds`` (set to 0): what two certifications of one image must
        agree on."""
        return astuple(replace(self, seconds=0.0))

    @classmethod
    def from_line(cls, line: str, layout: str | None = None) -> LogRow:
        """Parse one line of ``layout`` (default: any, told by its number of fields); raise
        ``ValueError`` if it is not a complete, valid row."""
        parts = line.rstrip("\n").split("\t")
        widths = [len(_LAYOUTS[layout])] if layout else [len(c) for c in _LAYOUTS.values()]
        if len(parts) not in widths:
            raise ValueError(f"expected {widths[0]} tab-separated fields, got {len(parts)}")
        cohen = len(parts) == len(COHEN_COLUMNS)
        given = parts[:5] if cohen else parts
        values: list[Any] = [parse(p) for parse, p in zip(_PARSERS, given, strict=False)]
        if cohen:  # no counts, and the time as Cohen et al. write it
            values += [math.nan, 0, 0, _parse_time(parts[5])]
        row = cls(*values)
        row._check(cohen)
        return row

    def _check(self, cohen: bool) -> None:
        if max(self.idx, self.label, self.predict, self.count, self.n) > _INT64_MAX:
            raise ValueError(f"idx, label, predict, count or n above {_INT64_MAX} (int64)")
        if self.correct not in (0, 1) or self.idx < 0 or self.label < 0 or self.predict < -1:
            raise ValueError("inconsistent values")
        if not all(math.isfinite(v) and v >= 0 for v in (self.radius, self.seconds)):
            raise ValueError("radius or seconds out of range")
        if cohen:  # no counts, no bound, no alpha: from_line fills them in
            return
        if self.n < 1 or not 0 <= self.count <= self.n or not 0 <= self.pa_lower <= 1:
            raise ValueError("inconsistent values, or pa_lower out of range")
        if self.alpha is not None and not 0 < self.alpha < 1:
            raise ValueError("alpha out of range")
        if self.image_sha256 is not None and not _SHA_RE.fullmatch(self.image_sha256):
            raise ValueError(f"image_sha256 must be 16 hex digits, got {self.image_sha256!r}")


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


def parse_log(data: bytes, name: str = "log") -> tuple[list[LogRow], int]:
    """Parse the bytes of a certification log (format 2, format 1 or Cohen et al.'s).

    A process killed while appending can leave a torn last line (no trailing newline, or, after
    a power loss, a garbled final line). That line is not returned; the second element of the
    result is the length of the valid prefix, so the caller can truncate the file there. Every
    row has the header's layout (``LogRow.layout``, which resuming relies on).

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
        >>> parse_log(b"", "log.tsv")
        ([], 0)
    """
    layout = next((k for k, h in HEADERS.items() if data.startswith(h)), None)
    if layout is None:
        if any(h.startswith(data) for h in HEADERS.values()):
            return [], 0  # empty, or killed while writing the header
        first = data.split(b"\n", 1)[0].decode(errors="replace")
        raise ValueError(
            f"{name} is not a certification log: header {first!r}, expected "
            f"{HEADERS['v2'].decode().strip()!r} (or format 1's, or Cohen et al.'s "
            f"{HEADERS['cohen'].decode().strip()!r})"
        )
    rows: list[LogRow] = []
    pos = len(HEADERS[layout])
    *complete, tail = data[pos:].split(b"\n")
    for number, raw in enumerate(complete):
        try:  # a row of another layout than the header's is malformed too
            rows.append(LogRow.from_line(raw.decode(), layout))
        except (ValueError, UnicodeDecodeError) as err:
            if number == len(complete) - 1 and not tail:
                return rows, pos  # a garbled final line: treated as torn
            raise ValueError(
                f"{name}: line {number + 2} is malformed ({err}); only the last line of a log "
                "can be torn, so this log is corrupted"
            ) from None
        pos += len(raw) + 1
    return rows, pos


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
    if sigma is None and "sigma" in settings:
        sigma = float(settings["sigma"])
    allowed = _allowed_looks(settings)
    for number, row in enumerate(rows, start=2):
        problem = next(_problems(row, sigma, settings, allowed), None)
        if problem is not None:
            raise ValueError(f"{name}, line {number}: {problem}")


def _problems(
    row: LogRow, sigma: float | None, settings: Mapping[str, Any], allowed: set[tuple[int, float]]
) -> Iterator[str]:
    """The rules of ``validate_rows`` that ``row`` breaks, in order (settings checked)."""
    size, classes = settings.get("dataset", {}).get("size"), settings.get("num_classes")
    if size is not None and row.idx >= size:
        yield f"idx {row.idx} is outside the {size} images of the settings' dataset"
    if classes is not None and not (0 <= row.label < classes and -1 <= row.predict < classes):
        yield (
            f"label {row.label} or prediction {row.predict} outside the {classes} classes of "
            "the settings"
        )
    if row.correct != int(row.predict == row.label):
        yield (
            f"correct must be int(predict == label), got correct={row.correct} for "
            f"predict={row.predict}, label={row.label}"
        )
    if row.predict == ABSTAIN and row.radius != 0:
        yield f"an abstention (predict -1) has radius 0, got {row.radius}"
    # the levels its pa_lower may be at: its own alpha, or (format 1) the settings' for n
    alphas = [row.alpha] if row.alpha is not None else [a for n, a in allowed if n == row.n]
    if row.n and row.alpha is None and allowed and not alphas:
        yield f"n={row.n} is not a sample count the settings allow ({sorted(allowed)[:4]}...)"
    # Cohen et al.'s rows record no counts: at best, every sample was of the top class
    pa = row.pa_lower if row.n else max((a ** (1 / n) for n, a in allowed), default=1.0)
    if sigma is not None and row.predict != ABSTAIN:
        bound = certified_radius(sigma, pa) if pa < 1 else math.inf
        if row.radius > bound * (1 + 1e-9):
            note = "" if row.n else " (the most the settings' n and alpha give)"
            yield (
                f"radius {row.radius} exceeds sigma * Phi^-1(pa_lower) = {bound} "
                f"(sigma {sigma}, pa_lower {pa}{note})"
            )
    if not row.n:
        return
    if row.predict != ABSTAIN and row.pa_lower < 0.5:
        yield f"a prediction needs pa_lower >= 0.5 (CERTIFY abstains below), got {row.pa_lower}"
    expected = [clopper_pearson_lower(row.count, row.n, a) for a in alphas]
    if alphas and not any(
        math.isclose(row.pa_lower, e, rel_tol=1e-9, abs_tol=1e-300) for e in expected
    ):
        yield (
            f"pa_lower {row.pa_lower} is not the Clopper-Pearson bound of count {row.count} "
            f"in n {row.n} at alpha {alphas[0]} ({expected[0]})"
        )
    if row.alpha is not None and allowed and (row.n, row.alpha) not in allowed:
        yield (
            f"n={row.n} at alpha={row.alpha} is not a sample count and level the settings "
            f"allow ({sorted(allowed)[:4]}...)"
        )


def _allowed_looks(settings: Mapping[str, Any]) -> set[tuple[int, float]]:
    """The ``(n, alpha)`` pairs a log's rows may have: fixed n, or one look of the schedule
    (``settings`` checked: ``check_settings``)."""
    sequential = settings.get("sequential")
    if isinstance(sequential, Mapping):
        looks = sequential.get("looks", ())
        return set(zip(looks, sequential.get("look_alphas", ()), strict=False))
    if "n" in settings and "alpha" in settings:
        return {(settings["n"], settings["alpha"])}
    return set()
