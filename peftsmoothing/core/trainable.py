"""The contract between a wrapped model and the trainer (docs/design.md, "Contracts").

``NoiseTrainer`` trains any ``nn.Module``; when the module also satisfies ``Trainable``
(as [`peftsmoothing.PEFTModel`][peftsmoothing.PEFTModel] does) it saves checkpoints with the
module's own ``save`` and asks it for the frozen reference classifier. The trainer never imports the
wrapper or a method: it only knows this protocol.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

__all__ = ["Trainable"]


@runtime_checkable
class Trainable(Protocol):
    """What the trainer uses of a wrapped model beyond ``nn.Module``.

    Examples:
        >>> import peftsmoothing as ps
        >>> from torch import nn
        >>> isinstance(ps.wrap(nn.Linear(3, 2), method="full", normalize=None), Trainable)
        True
        >>> isinstance(nn.Linear(3, 2), Trainable)
        False
    """

    def trained_state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors training changes (all a checkpoint holds besides its recipe)."""
        ...

    def frozen_reference(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The frozen classifier when only a pixel-space module is trained, else ``None``."""
        ...

    def save(self, path: str | os.PathLike[str], metadata: Mapping[str, Any] | None = None) -> Path:
        """Write the trained tensors and the recipe that rebuilds the model to ``path``."""
        ...
