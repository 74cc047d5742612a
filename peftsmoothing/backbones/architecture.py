"""What rebuilds a plain timm model: its registry name and constructor options, verified.

``timm.create_model(name, **kwargs)`` does not store ``kwargs`` on the model, so a model made
outside peftsmoothing does not say how to build it again. ``timm_candidate`` reads what it
can from the model (the name with its pretrained tag from ``pretrained_cfg``, and options such
as ``img_size``, ``patch_size``, ``num_classes``, ``embed_dim``, ``depth``, ``num_heads``) and
records the model's *architecture signature*: every ``state_dict`` key with its shape, and
every submodule's type and plain settings (layer-norm eps, activation, pooling, ...).
``verify_candidate`` rebuilds the architecture on the meta device (no memory, no weights,
no download), keeps only the options that differ from the name's defaults, and returns the
recipe only if the rebuilt signature equals the recorded one; otherwise ``None``.

Whether the model held timm's pretrained weights cannot be read from it, so the recipe records
``pretrained: None`` (unknown) and the loader asks which weights to use (docs/security.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..core.validation import is_int

__all__ = ["TimmCandidate", "architecture_signature", "timm_candidate", "verify_candidate"]

#: Module attributes that change after construction without changing the architecture.
_RUNTIME_ATTRS = frozenset({"training", "grad_checkpointing", "fused_attn", "peftsmoothing_base"})

#: Constructor options a timm model keeps as attributes (option: attribute), beyond its size.
_MODEL_ATTRS = {
    "embed_dim": "embed_dim", "global_pool": "global_pool", "no_embed_class": "no_embed_class",
    "dynamic_img_size": "dynamic_img_size", "class_token": "has_class_token",
    "reg_tokens": "num_reg_tokens",
}

Signature = tuple[tuple[Any, ...], ...]


@dataclass(frozen=True)
class TimmCandidate:
    """A timm model as ``wrap`` found it: what may rebuild it, not yet verified.

    Attributes:
        name: timm name with its pretrained tag, e.g. ``"vit_base_patch16_224.augreg_in21k"``.
        kwargs: Constructor options read from the model (all of them, defaults included).
        signature: ``architecture_signature`` of the model.
    """

    name: str
    kwargs: dict[str, Any]
    signature: Signature


def _plain(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    return isinstance(value, tuple) and len(value) <= 16 and all(_plain(v) for v in value)


def architecture_signature(model: nn.Module) -> Signature:
    """Every ``state_dict`` key with its shape, and every submodule's type and plain settings.

    Two models with the same signature compute the same function of the same weights, up to
    settings that are not plain attributes of a module.

    Examples:
        >>> from torch import nn
        >>> a = architecture_signature(nn.Sequential(nn.Linear(2, 3), nn.GELU()))
        >>> a == architecture_signature(nn.Sequential(nn.Linear(2, 3), nn.GELU()))
        True
        >>> a == architecture_signature(nn.Sequential(nn.Linear(2, 3), nn.GELU("tanh")))
        False
    """
    signature: list[tuple[Any, ...]] = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    for name, m in model.named_modules():
        plain = [(k, v) for k, v in vars(m).items() if not k.startswith("_") and _plain(v)]
        settings = tuple(sorted((k, v) for k, v in plain if k not in _RUNTIME_ATTRS))
        signature.append((name, f"{type(m).__module__}.{type(m).__qualname__}", settings))
    return tuple(signature)


def _size(value: Any) -> int | list[int] | None:
    """An int for a square size, a list for another, ``None`` if not a size."""
    if is_int(value):
        return int(value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(
        isinstance(v, int) for v in value
    ):
        return int(value[0]) if value[0] == value[1] else [int(v) for v in value]
    return None


def _read_kwargs(model: nn.Module) -> dict[str, Any]:
    """Constructor options a timm model shows as attributes (those it has)."""
    found: dict[str, Any] = {}
    num_classes = getattr(model, "num_classes", None)
    if is_int(num_classes):
        found["num_classes"] = int(num_classes)  # type: ignore[arg-type]
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first_conv is not None:
        found["in_chans"] = first_conv.in_channels
    patch_embed = getattr(model, "patch_embed", None)
    for key in ("img_size", "patch_size"):
        size = _size(getattr(patch_embed, key, None))
        if size is not None:
            found[key] = size
    for key, attr in _MODEL_ATTRS.items():
        value = getattr(model, attr, None)
        if isinstance(value, (int, str)):  # bool is an int
            found[key] = value
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, (nn.Sequential, nn.ModuleList)) and len(blocks):
        found["depth"] = len(blocks)
        attn = getattr(blocks[0], "attn", None)
        if isinstance(getattr(attn, "num_heads", None), int):
            found["num_heads"] = attn.num_heads  # type: ignore[union-attr]
        qkv = getattr(attn, "qkv", None)
        if isinstance(qkv, nn.Linear):
            found["qkv_bias"] = qkv.bias is not None
    return found


def timm_candidate(model: nn.Module) -> TimmCandidate | None:
    """Read what may rebuild a timm model; ``None`` for a model that is not timm's.

    Cheap: nothing is built (see ``verify_candidate``).

    Examples:
        >>> import timm, torch
        >>> with torch.device("meta"):
        ...     vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4)
        >>> c = timm_candidate(vit)
        >>> c.name, c.kwargs["img_size"], c.kwargs["patch_size"]
        ('vit_tiny_patch16_224.augreg_in21k_ft_in1k', 32, 4)
    """
    cfg = getattr(model, "pretrained_cfg", None)
    if not isinstance(cfg, Mapping):
        return None
    import timm

    arch, tag = cfg.get("architecture"), cfg.get("tag")
    if not isinstance(arch, str) or not timm.is_model(arch):
        return None
    name = f"{arch}.{tag}" if isinstance(tag, str) and tag else arch
    return TimmCandidate(name, _read_kwargs(model), architecture_signature(model))


def _build_meta(name: str, kwargs: Mapping[str, Any]) -> nn.Module | None:
    import timm

    try:
        with torch.device("meta"):
            return timm.create_model(name, pretrained=False, **kwargs)
    except Exception:  # an option this model class does not take, or a meta-unfriendly init
        return None


def verify_candidate(candidate: TimmCandidate) -> dict[str, Any] | None:
    """The recipe that rebuilds the candidate's architecture exactly, or ``None``.

    Builds the name's default architecture on the meta device, keeps the options whose values
    differ from the default's, builds again with them and compares every ``state_dict`` key and
    shape and every submodule's settings with the candidate's signature.

    Returns:
        ``{"name", "pretrained": None, "kwargs", "file": None, "seed": None}``; ``pretrained``
        is ``None`` because whether the model held timm's weights cannot be read from it.

    Examples:
        >>> import timm, torch
        >>> with torch.device("meta"):
        ...     vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4,
        ...                             num_classes=10)
        >>> verify_candidate(timm_candidate(vit))["kwargs"]
        {'num_classes': 10, 'img_size': 32, 'patch_size': 4}
        >>> vit.blocks[0].norm1.eps = 1e-3  # changed after creation: no recipe rebuilds it
        >>> verify_candidate(timm_candidate(vit)) is None
        True
    """
    default = _build_meta(candidate.name, {})
    if default is None:
        return None
    defaults = _read_kwargs(default)
    kwargs = {k: v for k, v in candidate.kwargs.items() if defaults.get(k) != v}
    rebuilt = _build_meta(candidate.name, kwargs) if kwargs else default
    if rebuilt is None or architecture_signature(rebuilt) != candidate.signature:
        return None
    return {"name": candidate.name, "pretrained": None, "kwargs": kwargs, "file": None,
            "seed": None}  # fmt: skip
