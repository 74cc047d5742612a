"""Linear probing (baseline): only the classification head is trained."""

from __future__ import annotations

from torch import nn

from .base import Method, MethodContext, register_method

__all__ = ["Linear"]


@register_method("linear")
class Linear(Method):
    """Train the classification head only.

    Examples:
        >>> import peftsmoothing as ps
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.ReLU(), nn.Linear(5, 3))
        >>> m = ps.wrap(net, method="linear", head="3", normalize=None)
        >>> ps.parameter_report(m).trainable  # 5 * 3 + 3
        18
    """

    description = "Linear probing: only the classification head is trained (baseline)"

    def apply(self, model: nn.Module, context: MethodContext) -> None:
        if context.head_name is None:
            raise ValueError(
                "linear: no classification head found; pass head='<module name>' to wrap()"
            )
        model.get_submodule(context.head_name).requires_grad_(True)
