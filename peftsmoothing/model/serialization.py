"""The save format of a wrapped model: a directory with a JSON config and the trained tensors.

A saved directory holds ``CONFIG_FILE`` (``peftsmoothing.json``: format name and version,
the [`WrapSpec`][peftsmoothing.WrapSpec], a record of the base model with the fingerprint of its
frozen weights, the name and shape of every saved tensor, and the user's metadata) and
``TENSORS_FILE`` (``trainable.safetensors``: only the tensors training changes). Reading trusts
nothing but the directory (docs/security.md): files that link out of it are refused, and the
tensors must be exactly those the rebuilt model trains, checked from the safetensors header
before any tensor is read. Directories of release 0.1 (``LEGACY_TENSORS_FILE``, a
``torch.save`` zip) are read with ``weights_only=True`` once the zip directory shows that they
unpack to no more than the trained tensors take.

This module imports no method and no model class: [`PEFTModel.save`][peftsmoothing.PEFTModel.save]
and [`peftsmoothing.load`][peftsmoothing.load] call it with plain values.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._version import __version__
from ..backbones.recipes import MAX_INPUT_SIDE, check_numbers
from ..core.files import atomic_write, file_inside, read_json
from ..core.fingerprint import stored_fingerprint, tensors_fingerprint
from ..core.params import trained_keys
from .tensorfile import (
    LEGACY_TENSORS_FILE,
    TENSORS_FILE,
    read_legacy,
    read_safetensors,
    write_tensors,
)

__all__ = [
    "saved_method_options",
    "CONFIG_FILE",
    "FORMAT",
    "FORMAT_VERSION",
    "LEGACY_TENSORS_FILE",
    "TENSORS_FILE",
    "base_record",
    "check_base_fingerprint",
    "frozen_fingerprint",
    "read_config",
    "read_tensors",
    "write_model",
    "write_tensors",
]

#: The JSON config of a saved model.
CONFIG_FILE = "peftsmoothing.json"
#: The ``format`` field of ``CONFIG_FILE``.
FORMAT = "peftsmoothing-wrapped-model"
#: The newest ``format_version`` this release reads and the one it writes: 2 since tensors
#: are saved as safetensors and the frozen-weights fingerprint is always recorded.
FORMAT_VERSION = 2


def base_record(
    model: nn.Module,
    *,
    num_parameters: int,
    fingerprint: str | None,
    recipe: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The ``base`` section of the config: what the wrapped base model was.

    Args:
        model: The base model (inside the wrapper).
        num_parameters: Its parameter count before the method added any.
        fingerprint: ``frozen_fingerprint`` as ``wrap`` found it.
        recipe: How to rebuild it ([`peftsmoothing.create_model`][peftsmoothing.create_model]), or
            ``None``.

    Returns:
        ``{"class", "architecture", "num_parameters", "fingerprint", "recipe"}``.

    Examples:
        >>> from torch import nn
        >>> base_record(nn.Linear(2, 2), num_parameters=6, fingerprint=None, recipe=None)["class"]
        'torch.nn.modules.linear.Linear'
    """
    cfg = getattr(model, "pretrained_cfg", None)
    arch = cfg.get("architecture") if isinstance(cfg, dict) else None
    return {
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "architecture": str(arch) if arch else None,
        "num_parameters": num_parameters,
        "fingerprint": fingerprint,
        "recipe": dict(recipe) if recipe is not None else None,
    }


def write_model(
    path: str | os.PathLike[str],
    *,
    spec: Mapping[str, Any],
    base: Mapping[str, Any],
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``TENSORS_FILE`` and ``CONFIG_FILE`` (atomically) into the directory.

    Args:
        path: Output directory (created if needed).
        spec: The wrap spec as a dict (``dataclasses.asdict(WrapSpec)``).
        base: The base model's record (``base_record``).
        tensors: The trained tensors.
        metadata: Extra JSON-serialisable information.

    Returns:
        The directory path.

    Examples:
        >>> import tempfile, torch
        >>> base, spec, w = {"fingerprint": "0" * 64}, {"method": "lora"}, torch.ones(2)
        >>> out = write_model(tempfile.mkdtemp(), spec=spec, base=base, tensors={"w": w})
        >>> read_config(out)["tensors"]
        {'w': [2]}

    Raises:
        ValueError: If ``base`` records no fingerprint of the frozen weights (a save always
            does, so that loading can check the backbone).
    """
    if not isinstance(base.get("fingerprint"), str):
        raise ValueError("refusing to save without a fingerprint of the frozen weights")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "peftsmoothing_version": __version__,
        "spec": dict(spec),
        "base": dict(base),
        "tensors": {k: list(v.shape) for k, v in tensors.items()},
        "metadata": dict(metadata) if metadata else {},
    }
    write_tensors(out, tensors)
    atomic_write(out / CONFIG_FILE, (json.dumps(config, indent=2) + "\n").encode())
    return out


def read_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check the JSON config of a directory written by
    [`PEFTModel.save`][peftsmoothing.PEFTModel.save].

    Raises:
        FileNotFoundError: If the directory holds no ``peftsmoothing.json``.
        ValueError: If the file is a link out of the directory, is not valid JSON, is not
            a peftsmoothing model config, or holds a number out of bounds (``recipes``).

    Examples:
        >>> import tempfile
        >>> read_config(tempfile.mkdtemp())  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        FileNotFoundError: ... is not a saved peftsmoothing model: peftsmoothing.json not found
    """
    cfg_path = file_inside(path, CONFIG_FILE)
    if not cfg_path.is_file():
        raise FileNotFoundError(
            f"{path} is not a saved peftsmoothing model: {CONFIG_FILE} not found"
        )
    config = read_json(cfg_path)
    try:
        _check_config(config, cfg_path)
    except RecursionError:  # a spec nested deeper than check_numbers can follow
        raise ValueError(f"{cfg_path} is corrupt (nested too deeply)") from None
    return config


def _check_config(config: Any, path: Path) -> None:
    """Refuse a config of another format or a newer version, whose sections are not JSON
    objects, that lacks ``spec``, ``base`` or ``spec.method``, or with a number out of bounds
    in ``spec``: one line naming the file and the section, not a traceback later."""
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ValueError(f"{path} is not a peftsmoothing model config")
    version = config.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"{path}: format_version {version!r} is not a version of the format")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{path} was written by a newer peftsmoothing "
            f"({config.get('peftsmoothing_version')}); upgrade to load it"
        )
    for name in ("spec", "base"):
        if name not in config:
            raise ValueError(f"{path}: {name} is missing")
    for name in ("spec", "base", "tensors", "metadata"):
        if name in config and not isinstance(config[name], dict):
            raise ValueError(f"{path}: {name} must be a JSON object, got {config[name]!r:.60}")
    for section, key in (("spec", "method_config"), ("base", "recipe"), ("metadata", "base_model")):
        value = config.get(section, {}).get(key)
        if value is not None and not isinstance(value, dict):
            raise ValueError(
                f"{path}: {section}.{key} must be a JSON object or null, got {value!r:.60}"
            )
    spec = config["spec"]
    if spec.get("method") is None:
        raise ValueError(f"{path}: spec.method is missing")
    if not isinstance(spec["method"], str):
        raise ValueError(f"{path}: spec.method must be a string, got {spec['method']!r:.60}")
    check_numbers(spec, f"{path}: spec")  # classes, input size, method options: bounded
    check_numbers(spec.get("input_size"), f"{path}: spec.input_size", limit=MAX_INPUT_SIDE)


def read_tensors(
    directory: str | os.PathLike[str],
    map_location: Any,
    expected: Mapping[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """The saved trained tensors: exactly those of ``expected``, read only as far as they fit.

    ``TENSORS_FILE`` must name exactly the tensors in ``expected``, each with its dtype and
    shape, and be as long as its header and their data: checked from the safetensors header
    before any tensor is read. A 0.1 ``LEGACY_TENSORS_FILE`` is read with
    ``torch.load(weights_only=True)``, and only when its zip directory shows uncompressed
    records no larger than the tensors of ``expected`` take (a crafted file could otherwise
    make ``torch.load`` allocate a storage far larger than the file); then it must hold
    exactly the names and shapes of ``expected``. So the caller may load what this returns.

    Args:
        directory: A saved model or checkpoint directory.
        map_location: Device to move the tensors to (``None``: the CPU).
        expected: The tensors the model trains (``trained_state_dict()``): their names,
            dtypes and shapes.

    Returns:
        Name -> tensor.

    Raises:
        FileNotFoundError: If the directory holds neither file.
        ValueError: If it holds both, a file links out of the directory, is corrupt, is
            larger than ``expected`` needs, or does not hold exactly the tensors of
            ``expected``.

    Examples:
        >>> import tempfile, torch
        >>> d = tempfile.mkdtemp(); _ = write_tensors(d, {"w": torch.ones(2)})
        >>> read_tensors(d, "cpu", {"w": torch.zeros(2)})
        {'w': tensor([1., 1.])}
        >>> read_tensors(d, "cpu", {"w": torch.zeros(3)})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: ...: the saved tensors do not fit this base model: w (saved (2,), model (3,))
    """
    folder = Path(directory)
    file, legacy = file_inside(folder, TENSORS_FILE), file_inside(folder, LEGACY_TENSORS_FILE)
    if os.path.lexists(file) and os.path.lexists(legacy):
        raise ValueError(
            f"{folder} holds both {TENSORS_FILE} and {LEGACY_TENSORS_FILE}: ambiguous, refused"
        )
    if legacy.is_file():
        tensors = read_legacy(legacy, expected)
    elif file.is_file():
        tensors = read_safetensors(file, expected)
    else:
        raise FileNotFoundError(f"{directory} holds no {TENSORS_FILE}")
    return {k: v.to(map_location or "cpu") for k, v in tensors.items()}


def frozen_fingerprint(model: nn.Module) -> str:
    """Fingerprint of a model's frozen tensors: every ``state_dict`` entry training leaves
    alone (see ``peftsmoothing.core.params.trained_keys``).

    ``wrap`` records it and ``load`` checks it, so that trained adapters are never loaded onto
    another backbone (other weights with the same shapes).

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
        >>> _ = net[0].requires_grad_(False)
        >>> before = frozen_fingerprint(net)
        >>> with torch.no_grad():
        ...     _ = net[1].weight.add_(1.0)  # trained: not part of the fingerprint
        >>> frozen_fingerprint(net) == before
        True
    """
    trained = trained_keys(model)
    return tensors_fingerprint((k, v) for k, v in model.state_dict().items() if k not in trained)


def check_base_fingerprint(
    config: Mapping[str, Any],
    actual: str | None,
    path: str | os.PathLike[str],
    origin: str,
) -> None:
    """Refuse a base model whose frozen weights are not those the saved model was trained on.

    Args:
        config: The saved config (``read_config``). Only a directory of release 0.1 may
            lack the fingerprint (it loads with a ``UserWarning``; see
            ``peftsmoothing.core.fingerprint.stored_fingerprint``).
        actual: ``frozen_fingerprint`` of the rebuilt model.
        path: The saved directory, for messages.
        origin: Where the base model came from, for messages.

    Raises:
        ValueError: If the fingerprints differ, or the config lacks one (release 0.1 aside).

    Examples:
        >>> config = {"base": {"fingerprint": "abc"}}
        >>> check_base_fingerprint(config, "abc", "model", "the base model you passed")
        >>> check_base_fingerprint(config, "abd", "model", "x")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: model was trained on other frozen weights than those of x: ...
    """
    stored = stored_fingerprint(config, Path(path) / CONFIG_FILE)
    if stored is None:
        warnings.warn(
            f"{path} was saved without a fingerprint of its frozen weights (peftsmoothing "
            "< 0.2), so whether this base model is the one it was trained on cannot be checked",
            UserWarning,
            stacklevel=3,  # the caller's caller: load()'s user
        )
        return
    if stored != actual:
        raise ValueError(
            f"{path} was trained on other frozen weights than those of {origin}: the "
            f"fingerprints differ (saved {stored[:12]}..., given "
            f"{str(actual)[:12]}...). Its adapters would run on the wrong "
            "backbone; pass the base model (or base_weights=) it was trained on"
        )


def saved_method_options(
    config: Mapping[str, Any], path: str | os.PathLike[str], allowed: frozenset[str]
) -> dict[str, Any]:
    """The method options a saved config records, refusing any a save never writes.

    Options that name files (the ``peft`` method's ``adapter``) are passed by the user, never
    read from a directory (docs/security.md).

    Raises:
        ValueError: Naming the refused options.

    Examples:
        >>> saved_method_options({"spec": {"method_config": {"r": 4}}}, "d", frozenset({"r"}))
        {'r': 4}
    """
    saved = dict(config["spec"].get("method_config") or {})
    unexpected = sorted(set(saved) - allowed)
    if unexpected:
        raise ValueError(
            f"{Path(path) / CONFIG_FILE}: refusing method options {unexpected}: a saved model "
            "never records them (options that name files are yours to pass, e.g. "
            "ps.load(..., adapter=...))"
        )
    return saved
