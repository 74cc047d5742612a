"""Denoised smoothing (Salman et al. 2020): a trainable denoiser in front of a frozen classifier.

The denoiser runs in pixel space, on the noisy [0, 1] image, *before* the model's normalization
(the wrapped model computes ``model(normalize(denoiser(x)))``). The built-in architecture is
DnCNN (Zhang et al. 2017) as used by Salman et al.: it predicts the noise and subtracts it. Its
last convolution starts at zero, so a freshly wrapped model computes exactly what the frozen
classifier did. Train it with ``NoiseTrainer(loss="mse")`` (reconstruct the clean image) or
``loss="stability"`` (match the frozen classifier's prediction on the clean image); both losses
live in ``peftsmoothing.training.losses`` (a method never imports a loss).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..core.validation import check_int
from .base import Method, MethodConfig, MethodContext, register_method

__all__ = ["DnCNN", "Denoiser", "DenoiserConfig"]


class DnCNN(nn.Module):
    """DnCNN: ``x - f(x)`` with ``f`` = conv-ReLU, (conv-BN-ReLU) x (depth - 2), conv.

    Args:
        channels: Image channels.
        depth: Number of convolution layers (17 in DnCNN and Salman et al.).
        width: Feature channels of the hidden layers.

    Examples:
        >>> import torch
        >>> net = DnCNN(depth=5, width=16)
        >>> x = torch.rand(2, 3, 8, 8)
        >>> torch.equal(net(x), x)  # the last conv starts at zero: identity at init
        True
    """

    def __init__(self, channels: int = 3, depth: int = 17, width: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [
                nn.Conv2d(width, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
        last = nn.Conv2d(width, channels, 3, padding=1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)  # type: ignore[arg-type]
        layers.append(last)
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.body(x)


@dataclass(frozen=True)
class DenoiserConfig(MethodConfig):
    """Options of the ``denoiser`` method.

    Attributes:
        arch: Built-in architecture; ``"dncnn"``.
        depth: DnCNN depth (>= 2).
        width: DnCNN hidden channels (>= 1).
        channels: Image channels.
        denoiser: Your own ``nn.Module`` mapping images to images, instead of the built-in one.
            It is not stored in the saved JSON: pass it again to ``ps.load(..., denoiser=...)``.
    """

    arch: str = "dncnn"
    depth: int = 17
    width: int = 64
    channels: int = 3
    denoiser: nn.Module | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.arch != "dncnn":
            raise ValueError(f"denoiser: arch must be 'dncnn', got {self.arch!r}")
        for name, low in (("depth", 2), ("width", 1), ("channels", 1)):
            # check_int returns a plain int (a numpy integer would not be JSON-safe)
            self._normalize(**{name: check_int(getattr(self, name), f"denoiser: {name}", low)})
        if isinstance(self.denoiser, str) and self.denoiser == "custom":
            raise ValueError(
                "denoiser: this model was saved with a custom denoiser module; pass it again, "
                "e.g. ps.load(base, path, denoiser=MyDenoiser())"
            )
        if self.denoiser is not None and not isinstance(self.denoiser, nn.Module):
            raise ValueError(
                f"denoiser: denoiser must be an nn.Module, got {type(self.denoiser).__name__}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable options; a user-supplied module is recorded as ``"custom"``."""
        out = super().to_dict()
        out["denoiser"] = None if self.denoiser is None else "custom"
        return out


@register_method("denoiser")
class Denoiser(Method[DenoiserConfig]):
    """A trainable denoiser (DnCNN or your own) in pixel space before a frozen classifier.

    Examples:
        >>> import timm, peftsmoothing as ps
        >>> vit = timm.create_model("vit_tiny_patch16_224", pretrained=False,
        ...                         img_size=32, patch_size=4, num_classes=10)
        >>> m = ps.wrap(vit, method="denoiser", depth=3, width=8)
        >>> ps.parameter_report(m).trainable  # (3*8*9 + 8) + (8*8*9 + 2*8) + (8*3*9 + 3)
        1035
    """

    description = "Denoised smoothing: a DnCNN denoiser in pixel space before the frozen model"
    Config = DenoiserConfig

    def apply(self, model: nn.Module, context: MethodContext) -> None:
        cfg = self.config
        denoiser = cfg.denoiser or DnCNN(cfg.channels, cfg.depth, cfg.width)
        ref = next(model.parameters(), None)
        if ref is not None:
            denoiser = denoiser.to(device=ref.device, dtype=ref.dtype)
        context.pixel_module = denoiser.requires_grad_(True)
