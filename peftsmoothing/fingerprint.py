"""Fingerprints of model weights: a SHA-256 over the names, dtypes, shapes and values of tensors.

Two uses (docs/design.md, "Trust"): a saved model records the fingerprint of the frozen weights
it was trained on, so loading it onto other weights is refused; a certification log records the
fingerprint of the whole model, so resuming it with another model is refused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["image_fingerprint", "model_fingerprint", "tensors_fingerprint"]


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
