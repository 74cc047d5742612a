"""Visual prompt tuning (Jia et al. 2022, "VPT") for timm Vision Transformers.

Learnable prompt tokens are inserted after the class/register tokens, in front of the patch
tokens. *Shallow* VPT inserts them once before the first block; *deep* VPT replaces them with a
fresh set before every block. After the last block the prompt tokens are removed again, so the
final norm, the pooling (``token`` or ``avg``) and the head see exactly the tokens they were
built for. The prompts are held by a ``VisualPrompts`` module owned by the wrapped model
(``peft.vpt``) and enter the computation through forward hooks, so the base model's modules and
parameter names stay as they were.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..core.validation import check_real, is_int
from .base import Method, MethodConfig, MethodContext, register_method

__all__ = ["Prompt", "PromptConfig", "VisualPrompts"]


class VisualPrompts(nn.Module):
    """Prompt tokens for a ViT's blocks, attached with forward hooks.

    Args:
        blocks: The transformer blocks (``model.blocks``) whose token sequences get prompts.
        num_prefix_tokens: Number of class/register tokens in front of the patch tokens.
        num_tokens: Number of prompt tokens.
        dim: Token width (``embed_dim``).
        deep: A separate set of prompts for every block (deep VPT) or one set at the input.
        dropout: Dropout applied to the prompts.
        init_bound: Prompts start uniform in ``[-init_bound, init_bound]``.

    Examples:
        >>> import timm, torch
        >>> vit = timm.create_model("vit_tiny_patch16_224", pretrained=False,
        ...                         img_size=32, patch_size=4, num_classes=10)
        >>> vpt = VisualPrompts(vit.blocks, vit.num_prefix_tokens, 5, vit.embed_dim)
        >>> vit(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        blocks: nn.Sequential | nn.ModuleList,
        num_prefix_tokens: int,
        num_tokens: int,
        dim: int,
        deep: bool = False,
        dropout: float = 0.0,
        init_bound: float = 0.02,
    ) -> None:
        super().__init__()
        self.num_prefix_tokens = num_prefix_tokens
        self.num_tokens = num_tokens
        self.deep = deep
        sets = len(blocks) if deep else 1
        ref = next(blocks.parameters(), None)
        factory: dict[str, Any] = {} if ref is None else {"device": ref.device, "dtype": ref.dtype}
        self.prompts = nn.Parameter(torch.empty(sets, num_tokens, dim, **factory))
        nn.init.uniform_(self.prompts, -init_bound, init_bound)
        self.dropout = nn.Dropout(dropout)
        for i in range(sets):
            blocks[i].register_forward_pre_hook(functools.partial(self._pre_block, i))
        blocks[-1].register_forward_hook(self._strip)

    def _pre_block(self, index: int, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0]
        if not isinstance(x, torch.Tensor) or x.ndim != 3 or x.shape[-1] != self.prompts.shape[-1]:
            raise RuntimeError(
                "VisualPrompts expects block inputs of shape (batch, tokens, "
                f"{self.prompts.shape[-1]}), got {getattr(x, 'shape', type(x))}"
            )
        p = self.num_prefix_tokens
        prompts = self.dropout(self.prompts[index])  # only block 0 has a hook unless deep
        prompts = prompts.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
        rest = x[:, p:] if index == 0 else x[:, p + self.num_tokens :]
        return (torch.cat([x[:, :p], prompts, rest], dim=1), *args[1:])

    def _strip(
        self, module: nn.Module, args: tuple[Any, ...], output: torch.Tensor
    ) -> torch.Tensor:
        p = self.num_prefix_tokens
        return torch.cat([output[:, :p], output[:, p + self.num_tokens :]], dim=1)

    def extra_repr(self) -> str:
        layers, tokens, dim = self.prompts.shape
        return f"num_tokens={tokens}, dim={dim}, deep={self.deep}, layers={layers}"


@dataclass(frozen=True)
class PromptConfig(MethodConfig):
    """Options of the ``prompt`` method.

    Attributes:
        num_tokens: Number of prompt tokens (>= 1).
        deep: Deep VPT (new prompts before every block) instead of shallow (input only).
        dropout: Dropout on the prompt tokens, in [0, 1).
        init: ``"xavier"`` (uniform with the Xavier bound over the patch embedding's fan, as in
            VPT) or ``"normal"`` (std 0.02).
    """

    num_tokens: int = 10
    deep: bool = False
    dropout: float = 0.0
    init: str = "xavier"

    def __post_init__(self) -> None:
        if not is_int(self.num_tokens):
            raise ValueError(f"prompt: num_tokens must be an integer, got {self.num_tokens!r}")
        if self.num_tokens < 1:
            raise ValueError(f"prompt: num_tokens must be >= 1, got {self.num_tokens}")
        self._normalize(num_tokens=int(self.num_tokens))  # a numpy integer: JSON-safe int
        check_real(self.dropout, "prompt: dropout", low=0, high=1, high_open=True)
        if self.init not in ("xavier", "normal"):
            raise ValueError(f"prompt: init must be 'xavier' or 'normal', got {self.init!r}")


@register_method("prompt")
class Prompt(Method[PromptConfig]):
    """Visual prompt tuning (shallow or deep) for timm VisionTransformer-style models.

    Examples:
        >>> import timm, peftsmoothing as ps
        >>> vit = timm.create_model("vit_tiny_patch16_224", pretrained=False,
        ...                         img_size=32, patch_size=4, num_classes=10)
        >>> m = ps.wrap(vit, method="prompt", num_tokens=5, deep=True)
        >>> ps.parameter_report(m).trainable  # 12 blocks * 5 tokens * 192
        11520
    """

    description = "Visual prompt tuning (VPT): learnable tokens, shallow or deep, for timm ViTs"
    Config = PromptConfig

    def apply(self, model: nn.Module, context: MethodContext) -> None:
        cfg = self.config
        blocks = getattr(model, "blocks", None)
        prefix = getattr(model, "num_prefix_tokens", None)
        dim = getattr(model, "embed_dim", None)
        proj = getattr(getattr(model, "patch_embed", None), "proj", None)
        if (
            not isinstance(blocks, (nn.Sequential, nn.ModuleList))
            or len(blocks) == 0
            or not isinstance(prefix, int)
            or not isinstance(dim, int)
            or not isinstance(proj, nn.Conv2d)
        ):
            raise ValueError(
                "prompt: visual prompt tuning needs a timm VisionTransformer-style model with "
                "`blocks`, `num_prefix_tokens`, `embed_dim` and a convolutional `patch_embed.proj`"
                f"; got {type(model).__name__}. Use method='lora' or 'adapter' for other models."
            )
        fan = proj.in_channels * math.prod(proj.kernel_size) + dim
        bound = math.sqrt(6.0 / float(fan)) if cfg.init == "xavier" else 0.0
        prompts = VisualPrompts(blocks, prefix, cfg.num_tokens, dim, cfg.deep, cfg.dropout, bound)
        if cfg.init == "normal":
            nn.init.normal_(prompts.prompts, std=0.02)
        context.add_module("vpt", prompts)
