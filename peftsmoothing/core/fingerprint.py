"""Fingerprints of model weights: a SHA-256 over the names, dtypes, shapes and values of tensors.

Two uses (docs/design.md, "Trust"): a saved model records the fingerprint of the frozen weights
it was trained on, so loading it onto other weights is refused (``stored_fingerprint`` says
which configs may lack it: only those of release 0.1); a certification log records the
fingerprint of the whole model, so resuming it with another model is refused.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

__all__ = [
    "FINGERPRINT_SINCE",
    "image_fingerprint",
    "model_fingerprint",
    "stored_fingerprint",
    "tensors_fingerprint",
]

#: The first release whose saves always record the frozen-weights fingerprint (0.1 never did).
FINGERPRINT_SINCE = (0, 2)


def tensors_fingerprint(tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """SHA-256 (hex) of named tensors, in name order: names, dtypes, shapes and values.

    Args:
        tensors: ``(name, tensor)`` pairs, e.g. ``model.state_dict().items()``.

    Returns:
        64 hex digits; equal for bit-identical tensors under the same names.

    Examples:
        >>> import torch
        >>> a = tensors_fingerprint([("w", torch.ones(2))])
        >>> a == tensors_fingerprint([("w", torch.ones(2))]), a == tensors_fingerprint(
        ...     [("w", torch.zeros(2))])
        (True, False)
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(tensors, key=lambda item: item[0]):
        t = tensor.detach()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        digest.update(t.contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 of a model's state (names, dtypes, shapes and values of every tensor).

    Recorded in a certification log's settings so that resuming with another (or retrained)
    model is refused instead of mixing certificates of two models in one report.

    Examples:
        >>> from torch import nn
        >>> a = nn.Linear(2, 2)
        >>> model_fingerprint(a) == model_fingerprint(a), len(model_fingerprint(a))
        (True, 64)
    """
    return tensors_fingerprint(model.state_dict().items())


def image_fingerprint(image: object, label: int) -> str:
    """The data identity of one certified image: 16 hex digits of SHA-256 over its shape, its
    label and its values as float32 (CPU, contiguous bytes).

    A certification log (format 2) records it in each row's ``image_sha256`` column, so that
    resuming on another dataset, split or preprocessing is refused.

    Examples:
        >>> import torch
        >>> x = torch.zeros(3, 2, 2)
        >>> a = image_fingerprint(x, 1)
        >>> len(a), a == image_fingerprint(x.double(), 1), a == image_fingerprint(x, 2)
        (16, True, False)
    """
    t = torch.as_tensor(image).detach().to("cpu", torch.float32).contiguous()
    digest = hashlib.sha256(f"{tuple(t.shape)}|{int(label)}|".encode())
    digest.update(t.numpy().tobytes())
    return digest.hexdigest()[:16]


def _release(version: object) -> tuple[int, int] | None:
    """``(major, minor)`` of a version string such as ``"0.1.0.dev0"``, else ``None``."""
    pattern = r"(\d+)\.(\d+)(\.\d+)*((a|b|rc)\d+)?(\.post\d+)?(\.dev\d+)?(\+[\w.]+)?"
    found = re.fullmatch(pattern, version) if isinstance(version, str) else None
    return (int(found[1]), int(found[2])) if found else None


def stored_fingerprint(config: Mapping[str, Any], source: str | os.PathLike[str]) -> str | None:
    """The frozen-weights fingerprint a saved model's config records (``base.fingerprint``).

    Only a config of release 0.1 (format 1, ``peftsmoothing_version`` below
    ``FINGERPRINT_SINCE``), which never wrote the field, may lack it: the result is then
    ``None`` (``peftsmoothing.model.serialization.check_base_fingerprint`` warns). A missing field
    in a file whose versions say it was written by a release that always records one, a
    ``null`` or non-string field, or an unreadable version is refused, so that editing the
    file cannot turn the check off.

    Args:
        config: The config (``peftsmoothing.model.serialization.read_config``).
        source: The config file, for messages.

    Returns:
        The fingerprint, or ``None`` for a directory of release 0.1.

    Raises:
        ValueError: If the fingerprint is missing, ``null`` or not a string, except as above.

    Examples:
        >>> stored_fingerprint({"base": {"fingerprint": "ab12"}}, "m.json")
        'ab12'
        >>> stored_fingerprint({"format_version": 1, "peftsmoothing_version": "0.1.0.dev0",
        ...                     "base": {}}, "m.json") is None
        True
        >>> stored_fingerprint({"format_version": 2, "peftsmoothing_version": "0.2.0",
        ...                     "base": {"fingerprint": None}}, "m.json")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: m.json: base.fingerprint is None, not a fingerprint of the frozen weights: ...
    """
    file = os.fspath(source)
    base = config.get("base")
    base = base if isinstance(base, Mapping) else {}
    if "fingerprint" in base:
        stored = base["fingerprint"]
        if not isinstance(stored, str):
            raise ValueError(
                f"{file}: base.fingerprint is {stored!r}, not a fingerprint of the frozen "
                "weights: refused, since the base model cannot be checked (only directories "
                "of peftsmoothing 0.1, which lack the field, load without one)"
            )
        return stored
    version = config.get("peftsmoothing_version")
    release = _release(version)
    if release is None:
        raise ValueError(
            f"{file} records no fingerprint of its frozen weights and no readable "
            f"peftsmoothing_version ({version!r}): refused, since the base model cannot be "
            "checked"
        )
    fmt = config.get("format_version")
    if fmt != 1 or release >= FINGERPRINT_SINCE:
        raise ValueError(
            f"{file} records no fingerprint of its frozen weights, but it was written by "
            f"peftsmoothing {version!r} (format {fmt}), which always records one: refused, "
            "since the base model cannot be checked"
        )
    return None
