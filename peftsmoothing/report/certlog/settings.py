"""The settings file of a certification log (``<resolved log path>.json``), and comparing two.

See ``peftsmoothing.report.certlog`` for the format as a whole.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

FORMAT_VERSION: Final[int] = 2
"""The ``"format_version"`` of the settings this code writes (format 1 has none)."""

LOG_FORMATS: Final[tuple[str, ...]] = ("peftsmoothing", "cohen")
"""Row layouts ``certify_dataset(log_format=...)`` writes (the settings' ``"columns"``)."""

MODES: Final[tuple[str, ...]] = ("fixed", "target", "max_radius")
"""The settings' ``"mode"``: fixed-``n`` CERTIFY, or a sequential mode."""

SETTINGS_FORMAT: Final[str] = "peftsmoothing-certify-log"
"""The ``"format"`` entry of a log's settings file (``<log>.json``)."""

V1_KEYS: Final[tuple[str, ...]] = (
    "sigma", "n0", "n", "alpha", "seed", "num_classes", "precision", "model_sha256",
)  # fmt: skip


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
        The settings, in the order they are written.

    Examples:
        >>> s = log_settings(sigma=0.5, n0=100, n=100000, alpha=0.001, seed=0, num_classes=10,
        ...                  precision="fp32", model_sha256="0" * 64, dataset={"size": 10})
        >>> list(s)[:5], s["format"] == SETTINGS_FORMAT
        (['format', 'format_version', 'mode', 'columns', 'sigma'], True)
    """
    if columns not in LOG_FORMATS:
        raise ValueError(f"log_format must be one of {', '.join(LOG_FORMATS)}, got {columns!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if (mode == "fixed") != (sequential is None):
        raise ValueError("a sequential mode needs its parameters, and only it")
    out = {
        "format": SETTINGS_FORMAT,
        "format_version": FORMAT_VERSION,
        "mode": mode,
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
    if sequential is not None:
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
        if (first is None) != (other is None):
            diff = ["one of them has no settings file"]
        else:
            diff = settings_diff(first, other) if first and other else []
        if diff:
            raise ValueError(
                f"{name} was certified with other settings than {first_name}: "
                f"{', '.join(diff)}; merging them would mix certificates of different runs "
                "(compare them instead, or pass allow_mixed=True / --allow-mixed)"
            )
