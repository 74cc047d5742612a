"""Full fine-tuning (baseline): every parameter of the model is trained."""

from __future__ import annotations

from torch import nn

from .base import Method, MethodContext, register_method

__all__ = ["Full"]


@register_method("full")
class Full(Method):
    """Unfreeze every parameter (the baseline that PEFT methods are compared against).

    Examples:
        >>> import peftsmoothing as ps
        >>> from torch import nn
        >>> m = ps.wrap(nn.Linear(3, 2), method="full", normalize=None)
        >>> ps.parameter_report(m).trainable
        8
    """

    description = "Full fine-tuning: every parameter is trained (baseline)"

    def apply(self, model: nn.Module, context: MethodContext) -> None:
        model.requires_grad_(True)
