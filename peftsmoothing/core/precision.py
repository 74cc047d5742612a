"""How an inference forward pass runs: its numeric precision (``"fp32"``, or ``"bf16"`` /
``"fp16"`` autocast) and the model's eval mode (``eval_mode``).

The names ([`PRECISIONS`][peftsmoothing.core.names.PRECISIONS]) are declared in the torch-free
[`peftsmoothing.core.names`][peftsmoothing.core.names] and used by training, certification
and the CLI; torch is imported only when a precision is applied.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .names import PRECISIONS
from .validation import check_choice

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["PRECISIONS", "autocast", "eval_mode"]


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


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """``module`` in eval mode inside; on exit every submodule gets its own mode back.

    Examples:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Dropout().eval()).train(True)
        >>> net[1].eval()  # doctest: +ELLIPSIS
        Dropout(...)
        >>> with eval_mode(net):
        ...     net.training
        False
        >>> net.training, net[1].training
        (True, False)
    """
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode
