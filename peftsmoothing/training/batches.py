"""What the trainer checks about the batches a loader yields.

Images must be float tensors in [0, 1]: the noise is added in pixel space (docs/design.md,
invariant 1), so normalization belongs inside the model. Labels must index the model's outputs.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..core.precision import autocast, eval_mode

__all__ = ["BatchGuard", "check_images", "check_labels", "output_width", "split_batch"]

_RANGE_TOLERANCE = 1e-3


def split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)`` of a batch: a pair/list, or a dict with ``image``/``x`` and
    ``label``/``y``.

    Raises:
        TypeError: For anything else.

    Examples:
        >>> x, y = split_batch({"image": torch.zeros(1, 3, 2, 2), "label": torch.zeros(1)})
        >>> tuple(x.shape), tuple(y.shape)
        ((1, 3, 2, 2), (1,))
    """
    if isinstance(batch, Mapping):
        x, y = batch.get("image", batch.get("x")), batch.get("label", batch.get("y"))
    elif isinstance(batch, (list, tuple)) and len(batch) >= 2:
        x, y = batch[0], batch[1]
    else:
        raise TypeError("the loader must yield (images, labels) batches")
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError("the loader must yield (images, labels) as tensors")
    return x, y


def check_images(x: torch.Tensor, *, warn_range: bool) -> bool:
    """Reject non-float images; warn (when ``warn_range``) about values outside [0, 1].

    Returns:
        Whether it warned (the trainer warns once).

    Raises:
        ValueError: For integer images.

    Examples:
        >>> check_images(torch.rand(2, 3, 4, 4), warn_range=True)
        False
    """
    if not torch.is_floating_point(x):
        raise ValueError(
            f"the loader yields {x.dtype} images; NoiseTrainer expects float images in "
            "[0, 1] (e.g. torchvision's ToTensor(), or divide uint8 images by 255)")
    if not warn_range or x.numel() == 0:
        return False
    lo, hi = torch.aminmax(x.detach())
    if float(lo) < -_RANGE_TOLERANCE or float(hi) > 1 + _RANGE_TOLERANCE:
        warnings.warn(
            f"the loader yields images outside [0, 1] (min {float(lo):.3g}, max "
            f"{float(hi):.3g}). Noise must be added in pixel space: remove the "
            "normalization from the data pipeline and put it inside the model "
            "(peftsmoothing.wrap does that); otherwise sigma does not mean what it says",
            stacklevel=5)
        return True
    return False


def check_labels(y: torch.Tensor, num_outputs: int | None, *, always: bool) -> None:
    """Labels must lie in ``0..num_outputs - 1`` (checked on CUDA only when ``always``).

    Raises:
        ValueError: Naming the first label out of range.

    Examples:
        >>> check_labels(torch.tensor([0, 1]), 2, always=True)
    """
    if num_outputs is None or y.numel() == 0 or (y.is_cuda and not always):
        return
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= num_outputs:
        raise ValueError(
            f"label {hi if hi >= num_outputs else lo} is outside the model's "
            f"{num_outputs} outputs (labels must be 0..{num_outputs - 1}); "
            "does num_classes match the dataset?")


def output_width(module: nn.Module, x: torch.Tensor, device: torch.device, dtype: torch.dtype,
                 precision: str) -> int | None:
    """The model's number of outputs, from one image in eval mode without gradients (the
    modules' train/eval modes are restored); ``None`` if the output is not ``(1, K)``.

    Examples:
        >>> output_width(nn.Sequential(nn.Flatten(), nn.Linear(12, 5)), torch.rand(2, 3, 2, 2),
        ...              torch.device("cpu"), torch.float32, "fp32")
        5
    """
    with eval_mode(module), torch.no_grad(), autocast(device, precision):
        out = module(x[:1].to(device, dtype))
    return int(out.shape[1]) if isinstance(out, torch.Tensor) and out.ndim == 2 else None


class BatchGuard:
    """Checks every batch of a model's loaders and moves it to the device.

    The first batch of a pass is checked fully (image dtype and range, the model's output
    width from one image); later ones only for labels (on CUDA only the first, to avoid a host
    synchronisation). The range warning is given once per guard.

    Examples:
        >>> guard = BatchGuard(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)),
        ...                    torch.device("cpu"), torch.float32, "fp32")
        >>> x, y = guard((torch.rand(2, 3, 2, 2), torch.tensor([0, 1])), first=True)
        >>> guard.num_outputs, y.dtype
        (2, torch.int64)
    """

    def __init__(self, module: nn.Module, device: torch.device, dtype: torch.dtype,
                 precision: str) -> None:
        self.module, self.device, self.dtype, self.precision = module, device, dtype, precision
        self.num_outputs: int | None = None
        self.warned_range = False

    def __call__(self, batch: Any, *, first: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images, labels)`` of ``batch``, checked, on the device (labels as ``long``)."""
        x, y = split_batch(batch)
        if first:
            self.warned_range |= check_images(x, warn_range=not self.warned_range)
            if self.num_outputs is None:
                self.num_outputs = output_width(self.module, x, self.device, self.dtype,
                                                self.precision)
        check_labels(y, self.num_outputs, always=first)
        x = x.to(self.device, self.dtype, non_blocking=True)
        return x, y.to(self.device, torch.long, non_blocking=True)
