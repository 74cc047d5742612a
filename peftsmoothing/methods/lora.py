"""LoRA (Hu et al. 2021): low-rank updates ``W + (alpha / r) * B @ A`` of frozen weights.

The adapted layers wrap the *existing* frozen ``nn.Linear`` / ``nn.Conv2d`` parameters (the same
tensors, not copies) and follow loralib's conventions: they subclass ``loralib.LoRALayer`` and
name their parameters ``lora_A`` / ``lora_B``, so ``loralib.lora_state_dict`` and
``loralib.mark_only_lora_as_trainable`` work on wrapped models. A fused ``qkv`` projection is
adapted like loralib's ``MergedLinear`` with ``enable_lora``: by default only q and v.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import loralib
import torch
import torch.nn.functional as F
from torch import nn
from typing_extensions import override

from ..core.validation import check_real, is_int
from .base import Method, MethodConfig, MethodContext, register_method
from .targets import as_patterns, match_modules, replace_module

__all__ = ["LoRA", "LoRAConfig", "LoRAConv2d", "LoRALinear"]


class _LoRALayer(nn.Module, loralib.LoRALayer):
    """What the LoRA layers share: the adapted layer's frozen ``weight`` and ``bias`` (the same
    tensors), rank, scaling, dropout, merge flag, merging."""

    lora_A: nn.Parameter
    lora_B: nn.Parameter
    weight: torch.Tensor
    bias: torch.Tensor | None
    merged: bool

    def _init_lora(self, base: nn.Linear | nn.Conv2d, r: int, alpha: float, dropout: float) -> None:
        nn.Module.__init__(self)
        loralib.LoRALayer.__init__(
            self, r=r, lora_alpha=alpha, lora_dropout=dropout, merge_weights=False
        )
        # A module (not loralib's lambda) so that the layer pickles and deep-copies.
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scaling = alpha / r
        self.weight = base.weight
        self.register_parameter("bias", base.bias)  # type: ignore[arg-type]

    def delta_weight(self) -> torch.Tensor:
        """The update ``scaling * B @ A`` in the shape of ``weight``."""
        raise NotImplementedError

    @torch.no_grad()
    def merge(self) -> None:
        """Add the low-rank update to the frozen weight (no-op when already merged).

        The original weight is kept aside, so ``unmerge`` restores it bit for bit
        (subtracting the update again would leave float rounding in the frozen weight).
        """
        if not self.merged:
            self._unmerged_weight = self.weight.detach().clone()
            self.weight.add_(self.delta_weight().to(self.weight.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore the original frozen weight exactly (no-op when not merged)."""
        if self.merged:
            self.weight.copy_(self._unmerged_weight)
            del self._unmerged_weight
            self.merged = False


class LoRALinear(_LoRALayer):
    """An ``nn.Linear`` plus a trainable low-rank update; wraps the original's parameters.

    Args:
        base: The frozen linear layer to adapt (its ``weight``/``bias`` tensors are reused).
        r: Rank of the update.
        alpha: Scaling numerator: the update is ``(alpha / r) * B @ A``.
        dropout: Dropout probability on the input of the low-rank branch.
        enable: For fused projections (e.g. ``qkv``): which equal output slices get an update,
            like loralib's ``MergedLinear(enable_lora=...)``. ``None`` adapts the whole output.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> base = nn.Linear(4, 6)
        >>> layer = LoRALinear(base, r=2, alpha=2, enable=(True, False, True))
        >>> layer.lora_A.shape, layer.lora_B.shape
        (torch.Size([4, 4]), torch.Size([4, 2]))
        >>> x = torch.randn(3, 4)
        >>> torch.equal(layer(x), base(x))  # B starts at zero
        True
    """

    def __init__(
        self,
        base: nn.Linear,
        r: int = 8,
        alpha: float = 8.0,
        dropout: float = 0.0,
        enable: Sequence[bool] | None = None,
    ) -> None:
        self._init_lora(base, r, alpha, dropout)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.enable = None if enable is None else tuple(bool(e) for e in enable)
        slices = self.enable or (True,)
        if not any(slices) or self.out_features % len(slices):
            raise ValueError(
                f"enable={self.enable} must contain a True and divide out_features="
                f"{self.out_features} into equal slices"
            )
        self.slice = self.out_features // len(slices)
        self.lora_A = nn.Parameter(base.weight.new_empty(r * sum(slices), self.in_features))
        self.lora_B = nn.Parameter(base.weight.new_zeros(self.slice * sum(slices), r))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def _sliced(self, parts: Iterator[torch.Tensor], zeros: torch.Tensor, dim: int) -> torch.Tensor:
        """The enabled slices' ``parts`` in order and ``zeros`` for the others, concatenated
        along the output dimension ``dim``, times ``scaling``."""
        assert self.enable is not None
        return torch.cat([next(parts) if on else zeros for on in self.enable], dim) * self.scaling

    @override
    def delta_weight(self) -> torch.Tensor:
        if self.enable is None:
            return (self.lora_B @ self.lora_A) * self.scaling
        pairs = zip(self.lora_B.split(self.slice), self.lora_A.split(self.r), strict=True)
        zeros = self.lora_B.new_zeros(self.slice, self.in_features)
        return self._sliced((b @ a for b, a in pairs), zeros, dim=0)

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = F.linear(x, self.weight, self.bias)
        if self.merged:
            return result
        after_a = F.linear(self.lora_dropout(x), self.lora_A)
        if self.enable is None:
            return result + F.linear(after_a, self.lora_B) * self.scaling
        pairs = zip(after_a.split(self.r, dim=-1), self.lora_B.split(self.slice), strict=True)
        zeros = result.new_zeros(*result.shape[:-1], self.slice)
        return result + self._sliced((F.linear(a, b) for a, b in pairs), zeros, dim=-1)

    @override
    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
            f"alpha={self.lora_alpha}, enable={self.enable}, merged={self.merged}"
        )


class LoRAConv2d(_LoRALayer):
    """An ``nn.Conv2d`` plus a low-rank update: a ``k x k`` conv to ``r`` channels, then ``1 x 1``.

    The update has rank ``r`` when the kernel is flattened to ``(out, in * k * k)``, so it folds
    into the frozen kernel with ``merge``. Only ``groups == 1`` and zero padding are supported.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> base = nn.Conv2d(3, 8, 3, padding=1)
        >>> layer = LoRAConv2d(base, r=2)
        >>> sum(p.numel() for p in (layer.lora_A, layer.lora_B))  # r * (3*3*3 + 8)
        70
        >>> x = torch.randn(1, 3, 5, 5)
        >>> torch.equal(layer(x), base(x))
        True
    """

    def __init__(
        self, base: nn.Conv2d, r: int = 8, alpha: float = 8.0, dropout: float = 0.0
    ) -> None:
        if base.groups != 1 or base.padding_mode != "zeros" or isinstance(base.padding, str):
            raise ValueError(
                "LoRA on Conv2d supports groups=1 and numeric zero padding only "
                f"(got groups={base.groups}, padding={base.padding!r}, "
                f"padding_mode={base.padding_mode!r})"
            )
        self._init_lora(base, r, alpha, dropout)
        self.in_channels, self.out_channels = base.in_channels, base.out_channels
        self.kernel_size = base.kernel_size
        self.stride, self.padding, self.dilation = base.stride, base.padding, base.dilation
        self.lora_A = nn.Parameter(base.weight.new_empty(r, *base.weight.shape[1:]))
        self.lora_B = nn.Parameter(base.weight.new_zeros(self.out_channels, r, 1, 1))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    @override
    def delta_weight(self) -> torch.Tensor:
        flat = self.lora_B.flatten(1) @ self.lora_A.flatten(1)
        return flat.view_as(self.weight) * self.scaling

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stride, padding, dilation = self.stride, self.padding, self.dilation
        result = F.conv2d(x, self.weight, self.bias, stride, padding, dilation)
        if self.merged:
            return result
        low = F.conv2d(self.lora_dropout(x), self.lora_A, None, stride, padding, dilation)
        return result + F.conv2d(low, self.lora_B) * self.scaling

    @override
    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"r={self.r}, alpha={self.lora_alpha}, merged={self.merged}"
        )


@dataclass(frozen=True)
class LoRAConfig(MethodConfig):
    """Options of the ``lora`` method.

    Attributes:
        r: Rank of each update (>= 1).
        alpha: Scaling numerator; the update is ``(alpha / r) * B @ A`` (> 0).
        dropout: Dropout on the input of the low-rank branch, in [0, 1).
        target_modules: Module names, dotted suffixes or regular expressions of the ``nn.Linear``
            / ``nn.Conv2d`` layers to adapt. ``None``: every attention ``qkv`` projection (timm
            ViTs), with q and v adapted as in the LoRA paper.
        qkv_enable: Which of the (q, k, v) slices of a fused ``qkv`` projection get an update.
    """

    r: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] | None = None
    qkv_enable: tuple[bool, bool, bool] = (True, False, True)

    def __post_init__(self) -> None:
        if not is_int(self.r) or self.r < 1:
            raise ValueError(f"lora: r must be a positive integer, got {self.r!r}")
        if not self.alpha > 0:
            raise ValueError(f"lora: alpha must be > 0, got {self.alpha!r}")
        check_real(self.dropout, "lora: dropout", low=0, high=1, high_open=True)
        # int(): a numpy integer becomes a JSON-safe int
        self._normalize(r=int(self.r), target_modules=as_patterns(self.target_modules))
        enable = tuple(bool(e) for e in self.qkv_enable)
        if len(enable) != 3 or not any(enable):
            raise ValueError(
                f"lora: qkv_enable must be three booleans with at least one True, got "
                f"{self.qkv_enable!r}"
            )
        self._normalize(qkv_enable=enable)


@register_method("lora")
class LoRA(Method[LoRAConfig]):
    """LoRA on Linear/Conv2d layers; merges into the base weights for inference.

    Examples:
        >>> import timm, peftsmoothing as ps
        >>> vit = timm.create_model("vit_tiny_patch16_224", pretrained=False,
        ...                         img_size=32, patch_size=4, num_classes=10)
        >>> m = ps.wrap(vit, method="lora", r=4)
        >>> ps.parameter_report(m).trainable  # 12 blocks * 2 (q, v) * r * (192 + 192)
        36864
    """

    description = "LoRA: low-rank updates of frozen Linear/Conv2d weights (default: ViT q, v)"
    Config = LoRAConfig
    supports_merge = True

    @override
    def apply(self, model: nn.Module, context: MethodContext) -> None:
        cfg = self.config
        patterns = cfg.target_modules
        if patterns is None:
            if not any(n.split(".")[-1] == "qkv" for n, _ in model.named_modules()):
                raise ValueError(
                    "lora: this model has no attention 'qkv' projection, the default target; "
                    "pass target_modules=[...] naming the nn.Linear / nn.Conv2d layers to adapt "
                    f"(e.g. {_example_targets(model)})"
                )
            patterns = ("qkv",)
        for name, module in match_modules(model, patterns, (nn.Linear, nn.Conv2d), "lora"):
            if isinstance(module, nn.Linear):
                fused = name.split(".")[-1] == "qkv" and module.out_features % 3 == 0
                enable = cfg.qkv_enable if fused else None
                new: nn.Module = LoRALinear(module, cfg.r, cfg.alpha, cfg.dropout, enable)
            else:
                assert isinstance(module, nn.Conv2d)
                new = LoRAConv2d(module, cfg.r, cfg.alpha, cfg.dropout)
            new.train(module.training)
            replace_module(model, name, new)

    @override
    def merge(self, model: nn.Module) -> None:
        for module in model.modules():
            if isinstance(module, _LoRALayer):
                module.merge()

    @override
    def unmerge(self, model: nn.Module) -> None:
        for module in model.modules():
            if isinstance(module, _LoRALayer):
                module.unmerge()


def _example_targets(model: nn.Module) -> str:
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return ", ".join(repr(n) for n in names[:4]) or "no Linear/Conv2d layers found"
