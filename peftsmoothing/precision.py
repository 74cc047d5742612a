"""Numeric precision of a forward pass: ``"fp32"``, or ``"bf16"`` / ``"fp16"`` autocast.

Declared once here and used by training, certification and the CLI.
"""

from __future__ import annotations

import contextlib
from typing import Any, Final

import torch

from .validation import check_choice

__all__ = ["PRECISIONS", "autocast", "autocast_dtype"]

#: The precisions every forward pass accepts.
PRECISIONS: Final[tuple[str, ...]] = ("fp32", "bf16", "fp16")

_DTYPES: Final[dict[str, torch.dtype | None]] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a precision name (``None`` for fp32).

    Raises:
        ValueError: For an unknown name.

    Examples:
        >>> autocast_dtype("bf16"), autocast_dtype("fp32")
        (torch.bfloat16, None)
    """
    return _DTYPES[check_choice(precision, "precision", PRECISIONS)]


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` for ``precision`` on ``device`` (a no-op context for fp32).

    Examples:
        >>> import torch
        >>> with autocast(torch.device("cpu"), "bf16"):
        ...     (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
        torch.bfloat16
    """
    dtype = autocast_dtype(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
