"""The certification card: ``README.md`` in the Hub's model-card format, written from files.

Every fact in the card comes from the saved model's ``peftsmoothing.json`` (backbone recipe
and frozen-weights fingerprint, method and options, normalization, training record) and from
certification logs with their settings files (sigma, mode, ``n0``, ``n`` or the look schedule,
alpha, seed, precision, data, and the certified-accuracy tables); nothing is typed by hand, and
rendering the same files again gives the same bytes. A card is recognised by ``CARD_MARKER``,
so ``peftsmoothing card`` replaces its own earlier card and never a README a person wrote.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final

from ..core.files import atomic_write
from ..report.accuracy import CertificationReport
from ..report.tables import bound_table, certified_accuracy_table, check_radii

__all__ = ["CARD_FILE", "CARD_MARKER", "card_text", "is_card", "write_card"]

CARD_FILE: Final[str] = "README.md"
CARD_MARKER: Final[str] = "<!-- peftsmoothing certification card (`peftsmoothing card`) -->"
"""The line that marks a card this library wrote (and may rewrite)."""

_SETTINGS = ("sigma", "mode", "n0", "n", "alpha", "seed", "precision", "num_classes")


def _value(value: Any) -> str:
    """A setting as the card shows it: JSON, keys sorted (the same bytes every time)."""
    return json.dumps(value, sort_keys=True) if not isinstance(value, str) else value


def _table(rows: Iterable[tuple[str, Any]]) -> list[str]:
    return ["| | |", "|---|---|", *(f"| {key} | `{_value(value)}` |" for key, value in rows)]


def _command(settings: Mapping[str, Any]) -> str:
    """The ``peftsmoothing certify`` command line of a log's settings."""
    data = settings.get("dataset") or {}
    words = ["peftsmoothing certify --model MODEL_DIR",
             f"--dataset {data.get('name', 'DATASET')} --root DATA_DIR"]  # fmt: skip
    for key in ("split", "image_size"):  # --split, --image-size
        if data.get(key):
            words.append(f"--{key.replace('_', '-')} {data[key]}")
    words += [f"--sigma {settings['sigma']!r}", f"--n0 {settings['n0']}", f"--n {settings['n']}",
              f"--alpha {settings['alpha']!r}", f"--seed {settings['seed']}",
              f"--precision {settings['precision']}"]  # fmt: skip
    sequential = settings.get("sequential") or {}
    if settings.get("mode") == "target":
        words.append(f"--radius {sequential.get('radius')!r}")
    elif settings.get("mode") == "max_radius":
        words.append("--early-stop")
        if sequential.get("max_radius") is not None:
            words.append(f"--max-radius {sequential['max_radius']!r}")
        words.append(f"--tolerance {sequential.get('tolerance')!r}")
    if settings.get("columns") == "cohen":
        words.append("--log-format cohen")
    return " \\\n    ".join(words) + " \\\n    --out certify.tsv"


def card_text(
    config: Mapping[str, Any],
    reports: Mapping[str, CertificationReport],
    radii: Iterable[float] | None = None,
    confidence: float = 0.95,
) -> str:
    """The card of a saved model (its ``peftsmoothing.json``) certified in ``reports``.

    Args:
        config: The saved config (``peftsmoothing.model.serialization.read_config``).
        reports: ``{name: report}``, each read from a log with its settings file.
        radii: Columns of the certified-accuracy tables (default ``DEFAULT_RADII``).
        confidence: Of the lower bound on certified accuracy.

    Returns:
        The card's text (YAML metadata, then markdown), ending in a newline.

    Raises:
        ValueError: For a report without the settings a card must state (read it from a log
            written with its settings file).

    Examples:
        >>> config = {"spec": {"method": "lora", "method_config": {"r": 4}, "num_classes": 10},
        ...           "base": {"architecture": "resnet18", "fingerprint": "ab" * 32,
        ...                    "recipe": {"name": "resnet18", "pretrained": True}}}
        >>> card_text(config, {}).splitlines()[:3]
        ['---', 'library_name: peftsmoothing', 'base_model: timm/resnet18']
    """
    spec = config.get("spec") or {}
    base = config.get("base") or {}
    recipe = base.get("recipe") or {}
    training = (config.get("metadata") or {}).get("training") or {}
    name = recipe.get("name") or recipe.get("zoo") or base.get("architecture") or "unknown"
    method = spec.get("method", "unknown")
    columns = check_radii(radii)
    lines = ["---", "library_name: peftsmoothing"]
    if recipe.get("name") and recipe.get("pretrained"):  # timm's weights live at timm/<name>
        lines.append(f"base_model: timm/{recipe['name']}")
    lines += ["pipeline_tag: image-classification", "tags:"]
    lines += [f"- {tag}" for tag in ("peftsmoothing", "randomized-smoothing",
                                     "certified-robustness", method)]  # fmt: skip
    title = f"# {method} on {name}, certified by randomized smoothing"
    lines += ["---", "", CARD_MARKER, "", title, ""]
    lines += [
        "A smoothed classifier: the base model below, with Gaussian noise added in **pixel "
        "space of [0, 1] images** (normalization is a layer inside the model), so sigma and "
        "the certified L2 radii are in the same units. Load it with "
        "`peftsmoothing.load(...)`; certify with `peftsmoothing certify`.",
        "", "## Model", "",
    ]  # fmt: skip
    lines += _table([
        ("backbone", name),
        ("backbone recipe", recipe),
        ("frozen-weights fingerprint (SHA-256)", base.get("fingerprint")),
        ("method", method),
        ("method options", spec.get("method_config")),
        ("classes", spec.get("num_classes") or "the backbone's own head"),
        ("normalization inside the model (mean, std)", [spec.get("mean"), spec.get("std")]),
        ("input size", spec.get("input_size")),
    ])  # fmt: skip
    lines += ["", "## Training", ""]
    if training:
        lines += _table(sorted((k, v) for k, v in training.items() if k != "last"))
    else:
        lines.append("Not recorded in `peftsmoothing.json` (saved outside `NoiseTrainer`).")
    for title, report in reports.items():
        settings = report.settings or {}
        missing = [k for k in _SETTINGS if k not in settings]
        if missing:
            raise ValueError(
                f"{title}: the report does not record {', '.join(missing)}; a card states "
                "every setting: read the report from a log written with its settings file"
            )
        lines += ["", f"## Certification: {title}", ""]
        rows = [(k, settings[k]) for k in _SETTINGS]
        rows += [("sequential schedule", settings.get("sequential")),
                 ("data", settings.get("dataset")),
                 ("certified model (SHA-256 of all weights)", settings.get("model_sha256"))]
        lines += _table(rows)
        lines += ["", "Reproduce (the same seed gives the same certificates on the same device and "
                  "batch size):", "", "```bash", _command(settings), "```"]  # fmt: skip
        lines += ["", f"Approximate certified accuracy (Cohen et al. 2019) on {len(report)} "
                  "images:", "", certified_accuracy_table({title: report}, columns), "",
                  "Lower bound on the smoothed classifier's certified accuracy on these "
                  f"images, holding at all radii at once with probability >= {confidence:g}:",
                  "", bound_table({title: report}, columns, confidence)]  # fmt: skip
    return "\n".join(lines) + "\n"


def is_card(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a card this library wrote (it holds ``CARD_MARKER``).

    Examples:
        >>> import pathlib, tempfile
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "README.md"
        >>> _ = p.write_text("# my notes")
        >>> is_card(p)
        False
    """
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return CARD_MARKER.encode() in head


def write_card(
    directory: str | os.PathLike[str],
    reports: Mapping[str, CertificationReport],
    radii: Iterable[float] | None = None,
    confidence: float = 0.95,
    *,
    overwrite: bool = False,
) -> Path:
    """Write ``directory/README.md``, the card of the saved model there, atomically.

    Args:
        directory: A directory written by [`PEFTModel.save`][peftsmoothing.PEFTModel.save].
        reports: ``{name: report}`` read from logs with their settings files.
        radii: Columns of the tables.
        confidence: Of the lower bound on certified accuracy.
        overwrite: Replace a ``README.md`` that is not an earlier card.

    Returns:
        The card's path.

    Raises:
        FileExistsError: If ``README.md`` exists, is not a card and ``overwrite`` is false.
        ValueError: For an unreadable model directory or a report without its settings.

    Examples:
        >>> import tempfile, peftsmoothing as ps
        >>> from torch import nn
        >>> d = ps.wrap(nn.Linear(4, 2), method="full", normalize=None).save(tempfile.mkdtemp())
        >>> write_card(d, {}).name
        'README.md'
    """
    from .serialization import read_config

    folder = Path(directory)
    text = card_text(read_config(folder), reports, radii, confidence)
    target = folder / CARD_FILE
    if target.exists() and not overwrite and not is_card(target):
        raise FileExistsError(
            f"{target} exists and is not a card peftsmoothing wrote: move it, or pass "
            "overwrite=True (CLI: --overwrite)"
        )
    atomic_write(target, text.encode())
    return target
