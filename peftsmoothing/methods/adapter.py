"""Bottleneck adapters: AdaptFormer (parallel, Chen et al. 2022) and Houlsby (sequential, 2019).

An adapter is ``up(act(down(h)))`` with a zero-initialised up-projection, so a freshly wrapped
model computes exactly what the original did. ``style="parallel"`` adds ``scale * adapter(x)``
beside a module (default: every ViT block's MLP, whose input is ``x``); ``style="sequential"``
adds ``scale * adapter(y)`` after a module's output ``y`` (default: every block's attention and
MLP, before the residual sum). Adapters are owned by the wrapped model (``peft.adapter_<target>``)
and enter the computation through a forward hook on their target, so the base model's modules
and parameter names stay as they were.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..core.validation import check_real, is_int
from .base import Method, MethodConfig, MethodContext, register_method
from .targets import as_patterns, match_modules

__all__ = ["Adapter", "AdapterConfig", "BottleneckAdapter"]

#: The styles, and the scale each uses by default (AdaptFormer's 0.1 for parallel adapters).
_DEFAULT_SCALE = {"parallel": 0.1, "sequential": 1.0}


class BottleneckAdapter(nn.Module):
    """``scale * up(dropout(act(down(h))))`` added to a module's output by a forward hook.

    Args:
        dim: Feature width (last dimension) of the hooked tensors.
        bottleneck: Hidden width of the adapter.
        scale: Multiplier on the adapter branch.
        style: ``"parallel"`` (adapter reads the module's input) or ``"sequential"`` (its output).
        dropout: Dropout inside the bottleneck.
        activation: ``"relu"`` or ``"gelu"``.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> mlp = nn.Linear(8, 8)
        >>> adapter = BottleneckAdapter(8, 2, style="parallel").attach(mlp)
        >>> x = torch.randn(4, 8)
        >>> torch.equal(mlp(x), nn.functional.linear(x, mlp.weight, mlp.bias))
        True
    """

    def __init__(
        self,
        dim: int,
        bottleneck: int,
        scale: float = 1.0,
        style: str = "parallel",
        dropout: float = 0.0,
        activation: str = "relu",
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.style = style
        self.scale = scale
        self.down = nn.Linear(dim, bottleneck, device=device, dtype=dtype)
        self.act = nn.ReLU() if activation == "relu" else nn.GELU()
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(bottleneck, dim, device=device, dtype=dtype)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        nn.init.zeros_(self.down.bias)

    def attach(self, module: nn.Module) -> BottleneckAdapter:
        """Register the forward hook on ``module`` and return ``self``."""
        module.register_forward_hook(self._hook)
        return self

    def _hook(self, module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        h = args[0] if self.style == "parallel" else output
        return output + self.scale * self(h)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.up(self.dropout(self.act(self.down(h))))

    def extra_repr(self) -> str:
        return f"style={self.style!r}, scale={self.scale}"


@dataclass(frozen=True)
class AdapterConfig(MethodConfig):
    """Options of the ``adapter`` method.

    Attributes:
        style: ``"parallel"`` (AdaptFormer) or ``"sequential"`` (Houlsby).
        bottleneck: Hidden width of each adapter (>= 1).
        scale: Multiplier on the adapter branch; ``None`` means 0.1 for parallel (AdaptFormer's
            value) and 1.0 for sequential.
        dropout: Dropout inside the adapter, in [0, 1).
        activation: ``"relu"`` or ``"gelu"``.
        target_modules: Names, dotted suffixes or regexes of the modules to adapt. ``None``:
            every ViT block's ``mlp`` (parallel) or ``attn`` and ``mlp`` (sequential).
    """

    style: str = "parallel"
    bottleneck: int = 64
    scale: float | None = None
    dropout: float = 0.0
    activation: str = "relu"
    target_modules: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.style not in _DEFAULT_SCALE:
            raise ValueError(
                f"adapter: style must be 'parallel' or 'sequential', got {self.style!r}"
            )
        if not is_int(self.bottleneck):
            raise ValueError(f"adapter: bottleneck must be an integer, got {self.bottleneck!r}")
        if self.bottleneck < 1:
            raise ValueError(f"adapter: bottleneck must be >= 1, got {self.bottleneck}")
        self._normalize(bottleneck=int(self.bottleneck))  # a numpy integer: JSON-safe int
        if self.scale is not None and not self.scale > 0:
            raise ValueError(f"adapter: scale must be > 0, got {self.scale!r}")
        check_real(self.dropout, "adapter: dropout", low=0, high=1, high_open=True)
        if self.activation not in ("relu", "gelu"):
            raise ValueError(
                f"adapter: activation must be 'relu' or 'gelu', got {self.activation!r}"
            )
        self._normalize(target_modules=as_patterns(self.target_modules))

    @property
    def effective_scale(self) -> float:
        """The scale actually used (resolves ``None``)."""
        return _DEFAULT_SCALE[self.style] if self.scale is None else float(self.scale)


def _feature_dim(module: nn.Module, style: str, name: str) -> int:
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(
            f"adapter: cannot infer the feature width of {name!r} ({type(module).__name__}): "
            "it contains no nn.Linear; target a module that maps (..., dim) -> (..., dim)"
        )
    dim_in, dim_out = linears[0].in_features, linears[-1].out_features
    if style == "parallel" and dim_in != dim_out:
        raise ValueError(
            f"adapter: a parallel adapter needs equal input and output widths, but {name!r} maps "
            f"{dim_in} -> {dim_out}; use style='sequential' or another target"
        )
    return dim_out


@register_method("adapter")
class Adapter(Method[AdapterConfig]):
    """Bottleneck adapters, parallel (AdaptFormer) or sequential (Houlsby).

    Examples:
        >>> import timm, peftsmoothing as ps
        >>> vit = timm.create_model("vit_tiny_patch16_224", pretrained=False,
        ...                         img_size=32, patch_size=4, num_classes=10)
        >>> m = ps.wrap(vit, method="adapter", bottleneck=8)
        >>> ps.parameter_report(m).trainable  # 12 * (192*8 + 8 + 8*192 + 192)
        39264
    """

    description = "Bottleneck adapters: parallel (AdaptFormer) or sequential (Houlsby)"
    Config = AdapterConfig

    def apply(self, model: nn.Module, context: MethodContext) -> None:
        cfg = self.config
        patterns = cfg.target_modules
        if patterns is None:
            blocks = getattr(model, "blocks", None)
            if not isinstance(blocks, (nn.Sequential, nn.ModuleList)) or not all(
                hasattr(b, "attn") and hasattr(b, "mlp") for b in blocks
            ):
                raise ValueError(
                    "adapter: the default targets are the `attn`/`mlp` modules of a timm ViT's "
                    f"`blocks`, which {type(model).__name__} does not have; pass target_modules="
                )
            parts = "mlp" if cfg.style == "parallel" else "(attn|mlp)"
            patterns = (rf"blocks\.\d+\.{parts}",)
        options = (cfg.bottleneck, cfg.effective_scale, cfg.style, cfg.dropout, cfg.activation)
        for name, module in match_modules(model, patterns, (nn.Module,), "adapter"):
            dim = _feature_dim(module, cfg.style, name)
            ref = next(module.parameters())
            adapter = BottleneckAdapter(dim, *options, device=ref.device, dtype=ref.dtype)
            adapter.train(module.training)
            context.add_module(f"adapter.{name}", adapter.attach(module))
