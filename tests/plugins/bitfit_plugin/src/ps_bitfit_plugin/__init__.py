"""A third-party peftsmoothing method, registered only through its entry point."""

from dataclasses import dataclass

from torch import nn

import peftsmoothing as ps


@dataclass(frozen=True)
class BitFitConfig(ps.MethodConfig):
    include_head: bool = True


class BitFit(ps.Method):
    """Train every bias term (Ben Zaken et al. 2022)."""

    description = "BitFit: train only the bias terms"
    Config = BitFitConfig

    def apply(self, model: nn.Module, context: ps.MethodContext) -> None:
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.requires_grad_(True)
