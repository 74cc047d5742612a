"""Numeric precision of a forward pass: ``"fp32"``, or ``"bf16"`` / ``"fp16"`` autocast.

The names ([`PRECISIONS`][peftsmoothing.core.names.PRECISIONS]) are declared in the torch-free
[`peftsmoothing.core.names`][peftsmoothing.core.names] and used by training, certification
and the CLI; torch is imported only when a precision is applied.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from .names import PRECISIONS
from .validation import check_choice

if TYPE_CHECKING:
    import torch

__all__ = ["PRECISIONS", "autocast"]


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` for ``precision`` on ``device`` (a no-op context for fp32).

    Raises:
        ValueError: For an unknown precision name.

    Examples:
        >>> import torch
        >>> with autocast(torch.device("cpu"), "bf16"):
        ...     (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
        torch.bfloat16
    """
    import torch  # here, not at import: the command line reads PRECISIONS without torch

    dtypes = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    dtype = dtypes[check_choice(precision, "precision", PRECISIONS)]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
