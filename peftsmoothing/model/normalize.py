"""Input normalization as a layer, so that models take [0, 1] images.

See docs/design.md, "Normalization lives in the model".
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["Normalize", "Resize", "timm_mean_std"]


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` on NCHW images in [0, 1].

    Putting normalization inside the model keeps Gaussian noise in pixel space: the smoothing
    noise ``sigma`` is then measured in the same units as the certified L2 radius.

    Args:
        mean: Per-channel means (e.g. ImageNet's ``(0.485, 0.456, 0.406)``).
        std: Per-channel standard deviations, all positive.

    Examples:
        >>> import torch
        >>> norm = Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
        >>> norm(torch.full((1, 3, 2, 2), 0.75))[0, :, 0, 0].tolist()
        [1.0, 1.0, 1.0]
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        # the values as given (float64), for configs; the buffers hold them in float32
        self.given_mean = tuple(float(m) for m in mean)
        self.given_std = tuple(float(s) for s in std)
        mean_t = torch.tensor(self.given_mean, dtype=torch.float32)
        std_t = torch.tensor(self.given_std, dtype=torch.float32)
        if not 0 < mean_t.numel() == std_t.numel():
            raise ValueError(
                f"mean and std must be non-empty sequences of equal length, got {list(mean)} "
                f"and {list(std)}"
            )
        if not torch.all((std_t > 0) & std_t.isfinite()):
            raise ValueError(f"std must be positive and finite, got {list(std)}")
        if not torch.all(mean_t.isfinite()):
            raise ValueError(f"mean must be finite, got {list(mean)}")
        self.register_buffer("mean", mean_t.view(-1, 1, 1), persistent=False)
        self.register_buffer("std", std_t.view(-1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim < 3 or x.shape[-3] != self.mean.shape[0]:
            raise ValueError(
                f"Normalize expects images with {self.mean.shape[0]} channels in dimension -3, "
                f"got shape {tuple(x.shape)}"
            )
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"

    def as_lists(self) -> tuple[list[float], list[float]]:
        """Return ``(mean, std)`` as plain lists.

        Deprecated, will be removed in 0.3: nothing uses it; read ``given_mean`` and
        ``given_std`` (the values as given, as tuples) instead.

        Examples:
            >>> import warnings
            >>> with warnings.catch_warnings():
            ...     warnings.simplefilter("ignore", DeprecationWarning)
            ...     Normalize((0.5,), (0.25,)).as_lists()
            ([0.5], [0.25])
        """
        warnings.warn(
            "Normalize.as_lists() is deprecated and will be removed in 0.3; use "
            "list(norm.given_mean), list(norm.given_std)",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.mean.flatten().tolist(), self.std.flatten().tolist()


class Resize(nn.Module):
    """Bilinear resize of NCHW images to a fixed size, as a layer inside the model.

    Resizing *inside* the model keeps the smoothing noise and the certified radius in the
    data's native resolution (e.g. 32x32 CIFAR-10 images fed to a 224-px ViT), as in
    Carlini et al. (2023); resizing the data before the noise would measure radii in the
    upsampled space instead.

    Args:
        size: Output ``(height, width)``, or one int for a square.

    Examples:
        >>> import torch
        >>> Resize(8)(torch.rand(2, 3, 4, 4)).shape
        torch.Size([2, 3, 8, 8])
    """

    def __init__(self, size: int | Sequence[int]) -> None:
        super().__init__()
        hw = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
        if len(hw) != 2 or min(hw) < 1:
            raise ValueError(f"size must be a positive int or (height, width), got {size!r}")
        self.size: tuple[int, int] = (hw[0], hw[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) == self.size:
            return x
        return torch.nn.functional.interpolate(
            x, size=self.size, mode="bilinear", align_corners=False
        )

    def extra_repr(self) -> str:
        return f"size={self.size}"


def timm_mean_std(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """Read the input mean/std a timm model was pretrained with, or ``None`` if unknown.

    Uses the model's ``pretrained_cfg`` (timm sets it even for ``pretrained=False``).

    Examples:
        >>> import timm
        >>> m = timm.create_model("vit_tiny_patch16_224", pretrained=False)
        >>> timm_mean_std(m)
        ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    """
    cfg = getattr(model, "pretrained_cfg", None)
    mean, std = (cfg.get("mean"), cfg.get("std")) if isinstance(cfg, dict) else (None, None)
    if mean is None or std is None:
        return None
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)
