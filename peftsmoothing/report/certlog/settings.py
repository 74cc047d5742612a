"""The settings file of a certification log (``<resolved log path>.json``), and comparing two.

See ``peftsmoothing.report.certlog`` for the format as a whole.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from ...core.files import read_json

FORMAT_VERSION: Final[int] = 2
"""The ``"format_version"`` of the settings this code writes (format 1 has none)."""

LOG_FORMATS: Final[tuple[str, ...]] = ("peftsmoothing", "cohen")
"""Row layouts ``certify_dataset(log_format=...)`` writes (the settings' ``"columns"``)."""

MODES: Final[tuple[str, ...]] = ("fixed", "target", "max_radius")
"""The settings' ``"mode"``: fixed-``n`` CERTIFY, or a sequential mode."""

SETTINGS_FORMAT: Final[str] = "peftsmoothing-certify-log"
"""The ``"format"`` entry of a log's settings file (``<log>.json``)."""

MAX_SETTINGS_BYTES: Final[int] = 2**20
"""The largest settings file that is read (1 MiB; ours take a few hundred bytes)."""

MAX_DEPTH: Final[int] = 8
"""The deepest nesting of JSON objects and lists a settings file may have (ours: 3)."""


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
    mode: str = "fixed",
    sequential: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The settings file (``<log>.json``) of a format-2 log: what its rows were certified with.

    Resuming a log compares every entry but ``"format"`` with the settings of the new run
    (``settings_diff``).

    Args:
        sigma: Noise level of the smoothed classifier.
        n0: Selection samples per image.
        n: Estimation samples per image (the most any row draws).
        alpha: Failure probability of each certificate.
        seed: Master seed of the per-image seeds.
        num_classes: Number of classes.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"``.
        model_sha256: ``peftsmoothing.core.fingerprint.model_fingerprint`` of the base model.
        columns: The row layout, one of ``LOG_FORMATS``.
        dataset: What identifies the data: ``{"size": len(dataset), ...}`` (name, split,
            preprocessing; not paths, which are not identity).
        mode: ``"fixed"`` (fixed-``n`` CERTIFY), ``"target"`` or ``"max_radius"``
            (sequential CERTIFY, ``peftsmoothing.certify.sequential``).
        sequential: In a sequential mode, its parameters: ``n_max``, the ``looks`` and
            their ``look_alphas``, and ``radius`` (target) or ``max_radius`` and
            ``tolerance``; written under ``"sequential"``.

    Returns:
        The settings, in the order they are written (unchecked: the caller checks its
        arguments, and ``read_settings`` refuses settings of the wrong types).

    Examples:
        >>> s = log_settings(sigma=0.5, n0=100, n=100000, alpha=0.001, seed=0, num_classes=10,
        ...                  precision="fp32", model_sha256="0" * 64, dataset={"size": 10})
        >>> list(s)[:5], s["format"] == SETTINGS_FORMAT
        (['format', 'format_version', 'mode', 'columns', 'sigma'], True)
    """
    # every argument under its key, in the order of _KEYS; "sequential" only when given
    given = locals() | {"format_version": FORMAT_VERSION, "dataset": dict(dataset or {})}
    out = {"format": SETTINGS_FORMAT} | {key: given[key] for key in _KEYS if "." not in key}
    if sequential is None:
        del out["sequential"]
    else:
        out["sequential"] = dict(sequential)
    return out


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
    """The settings of a log (``settings_path``), or ``None`` when it has no settings file.

    The file must be a JSON object of our format, at most ``MAX_SETTINGS_BYTES`` long, with
    every entry ``log_settings`` writes (format 1: ``V1_KEYS``) of its type
    (``check_settings``): a string that reads like a number would switch the row checks off.

    Raises:
        ValueError: One line naming the file, and the key when one is wrong.

    Examples:
        >>> import tempfile
        >>> log = Path(tempfile.mkdtemp()) / "log.tsv"
        >>> read_settings(log) is None
        True
        >>> _ = settings_path(log).write_text('{"format": "%s", "sigma": "0.5"}' % SETTINGS_FORMAT)
        >>> read_settings(log)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: .../log.tsv.json: sigma must be a finite number above 0, got '0.5'
    """
    path = settings_path(log)
    if not path.is_file():
        return None
    value = load_settings_file(path)
    check_settings(value, str(path), complete=True)
    return value


def load_settings_file(path: Path) -> dict[str, Any]:
    """The JSON object in ``path`` if it is a log's settings file (``"format"``), unchecked
    (``check_settings``); read only if at most ``MAX_SETTINGS_BYTES`` long.

    Raises:
        ValueError: One line naming the file: too large, not JSON, or not of our format.

    Examples:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "peftsmoothing.json"
        >>> _ = path.write_text('{"format": "peftsmoothing-model"}')
        >>> load_settings_file(path)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: .../peftsmoothing.json is not the settings file of a certification log
    """
    if path.stat().st_size > MAX_SETTINGS_BYTES:
        raise ValueError(f"{path} is larger than a log's settings file may be (1 MiB): refused")
    value = read_json(path)
    if not isinstance(value, dict) or value.get("format") != SETTINGS_FORMAT:
        raise ValueError(f"{path} is not the settings file of a certification log")
    return value


def _integer(value: Any) -> bool:
    return type(value) is int  # JSON's integers: not a bool, not 1000.0


def _count(value: Any) -> bool:
    return _integer(value) and value >= 1


def _size(value: Any) -> bool:
    return value is None or (_integer(value) and value >= 0)


def _real(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _optional_real(value: Any) -> bool:
    return value is None or _real(value)


def _level(value: Any) -> bool:
    return _real(value) and 0 < value < 1


def _list_of(test: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, list) and all(map(test, value))


def _one_of(names: Sequence[str]) -> tuple[str, Callable[[Any], bool]]:
    return f"one of {', '.join(names)}", lambda v: isinstance(v, str) and v in names


#: Each entry of a log's settings: which settings must have it ("v1": all; "v2": format 2;
#: "sequential": format 2 in a sequential mode; None: none), what it must be, and the test of
#: it. ``log_settings`` writes the top-level entries, in this order, from its arguments of
#: the same names: a new setting is a row here and an argument there.
_KEYS: Final[dict[str, tuple[str | None, str, Callable[[Any], bool]]]] = {
    "format_version": ("v2", "an integer", _integer),
    "mode": ("v2", *_one_of(MODES)),
    "columns": ("v2", *_one_of(LOG_FORMATS)),
    "sigma": ("v1", "a finite number above 0", lambda v: _real(v) and v > 0),
    "n0": ("v1", "an integer of at least 1", _count),
    "n": ("v1", "an integer of at least 1", _count),
    "alpha": ("v1", "a number in (0, 1)", _level),
    "seed": ("v1", "an integer", _integer),
    "num_classes": ("v1", "an integer of at least 1", _count),
    "precision": ("v1", "a string", lambda v: isinstance(v, str)),
    "model_sha256": ("v1", "a string", lambda v: isinstance(v, str)),
    "dataset": ("v2", "a JSON object", lambda v: isinstance(v, dict)),
    "dataset.size": (None, "an integer of at least 0, or null", _size),
    "sequential": ("sequential", "a JSON object, or null",
                   lambda v: v is None or isinstance(v, dict)),
    "sequential.n_max": (None, "an integer of at least 1", _count),
    "sequential.looks": ("sequential", "a list of integers of at least 1", _list_of(_count)),
    "sequential.look_alphas": ("sequential", "a list of numbers in (0, 1)", _list_of(_level)),
    "sequential.radius": (None, "a finite number, or null", _optional_real),
    "sequential.beta": (None, "a finite number, or null", _optional_real),
    "sequential.max_radius": (None, "a finite number, or null", _optional_real),
    "sequential.tolerance": (None, "a finite number, or null", _optional_real),
}  # fmt: skip

V1_KEYS: Final[tuple[str, ...]] = tuple(k for k, (need, *_) in _KEYS.items() if need == "v1")
"""The entries of a format-1 log's settings (release 0.1), besides ``"format"``."""


def check_settings(settings: Mapping[str, Any], where: str, complete: bool = False) -> None:
    """Refuse settings whose entries are not of their types (``_KEYS``), or nested deeper
    than ``MAX_DEPTH``; ``complete``: also those that lack an entry ``log_settings`` writes
    (format 1: one of ``V1_KEYS``).

    Args:
        settings: The settings, as read from a file (or given by a caller).
        where: The file, for messages.
        complete: Require every entry (settings read from a file).

    Raises:
        ValueError: One line naming ``where`` and the first wrong or missing key.

    Examples:
        >>> check_settings({"n": 100, "sigma": 0.5}, "log.tsv.json")
        >>> check_settings({"n": 1000.0}, "log.tsv.json")
        Traceback (most recent call last):
        ...
        ValueError: log.tsv.json: n must be an integer of at least 1, got 1000.0
    """
    _check_depth(settings, where)
    required = {"v1"}
    if "format_version" in settings:
        required.add("v2")
        if settings.get("mode", "fixed") != "fixed":
            required.add("sequential")
    for key, (need, what, test) in _KEYS.items():
        parent, _, child = key.rpartition(".")
        node = settings.get(parent) if parent else settings
        if not isinstance(node, Mapping) or child not in node:
            if complete and need in required:
                raise ValueError(f"{where}: {key} is missing (every log's settings record it)")
            continue
        if not test(node[child]):
            raise ValueError(f"{where}: {key} must be {what}, got {node[child]!r:.80}")
    sequential = settings.get("sequential")
    if isinstance(sequential, Mapping):
        looks, alphas = sequential.get("looks"), sequential.get("look_alphas")
        if looks is not None and len(looks) != len(alphas or ()):
            raise ValueError(f"{where}: sequential.look_alphas must have one entry per look")


def _check_depth(value: Any, where: str) -> None:
    """Refuse JSON objects and lists nested more than ``MAX_DEPTH`` levels (no recursion)."""
    level: list[Any] = [value]
    for _ in range(MAX_DEPTH):
        level = [v for node in level if isinstance(node, (Mapping, list))
                 for v in (node.values() if isinstance(node, Mapping) else node)]  # fmt: skip
    if any(isinstance(node, (Mapping, list)) for node in level):
        raise ValueError(f"{where}: nested more than {MAX_DEPTH} levels (ours: 3)")


def check_same_settings(logs: Sequence[tuple[str, Mapping[str, Any] | None]]) -> None:
    """Refuse to merge logs whose settings differ from the first's (or of which only some
    have a settings file): one number from certificates of different settings, models or data
    is not a result of any of them.

    Args:
        logs: ``(name, settings or None)`` per log, as ``read_settings`` gives them.

    Raises:
        ValueError: Naming the first log that differs and how.
    """
    first_name, first = logs[0]
    for name, other in logs[1:]:
        diff = settings_diff(first or {}, other or {})
        if (first is None) != (other is None):
            diff = ["one of them has no settings file"]
        if diff:
            raise ValueError(
                f"{name} was certified with other settings than {first_name}: "
                f"{', '.join(diff)}; merging them would mix certificates of different runs "
                "(compare them instead, or pass allow_mixed=True / --allow-mixed)"
            )
