"""Building base models from a recorded recipe, so saved checkpoints can rebuild themselves.

:func:`create_model` is ``timm.create_model`` that remembers how the model was made; a model
wrapped and saved afterwards records that recipe, and ``ps.load(path)`` rebuilds the base model
from it without being handed one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = [
    "BASE_ATTR",
    "DEMO_VIT_KWARGS",
    "build_base_model",
    "create_model",
    "demo_vit",
    "unreproducible_reason",
]

#: Attribute on a model holding the recipe it was built from.
BASE_ATTR = "peftsmoothing_base"

#: timm ``vit_tiny_patch16_224`` options of the small demo backbone (1.2M parameters, 32 px).
DEMO_VIT_KWARGS: dict[str, Any] = {
    "img_size": 32,
    "patch_size": 4,
    "embed_dim": 128,
    "depth": 6,
    "num_heads": 4,
}


def create_model(
    name: str,
    pretrained: bool = False,
    *,
    file: str | os.PathLike[str] | None = None,
    seed: int | None = None,
    **kwargs: Any,
) -> nn.Module:
    """``timm.create_model`` that records its recipe for :func:`peftsmoothing.load`.

    Args:
        name: timm model name, e.g. ``"vit_base_patch16_224.augreg_in21k"``.
        pretrained: Download timm's pretrained weights (needs internet on first use).
        file: Load weights from this local ``state_dict`` file instead (e.g. a backbone you
            pre-trained yourself). Stored as an absolute path.
        seed: Seed the random initialisation (``pretrained=False`` without ``file``), so the
            same random backbone can be rebuilt later.
        **kwargs: Passed to ``timm.create_model`` (``img_size``, ``patch_size``, ...).

    Returns:
        The model, with the recipe in its ``peftsmoothing_base`` attribute.

    Examples:
        >>> m = create_model("vit_tiny_patch16_224", seed=0, img_size=32, patch_size=4)
        >>> m.peftsmoothing_base["kwargs"]
        {'img_size': 32, 'patch_size': 4}
    """
    spec: dict[str, Any] = {
        "name": name,
        "pretrained": bool(pretrained),
        "kwargs": dict(kwargs),
        "file": os.path.abspath(file) if file is not None else None,
        "seed": seed,
    }
    return build_base_model(spec)


def unreproducible_reason(spec: Mapping[str, Any]) -> str | None:
    """Why a recipe cannot rebuild the same weights, or ``None`` if it can.

    A randomly initialised model (no pretrained weights, no weights file) can only be rebuilt
    when its seed was recorded.

    Examples:
        >>> unreproducible_reason({"name": "vit_tiny_patch16_224", "seed": 0}) is None
        True
        >>> print(unreproducible_reason({"name": "vit_tiny_patch16_224"}))
        vit_tiny_patch16_224 was randomly initialised without a recorded seed
    """
    if spec.get("zoo") or spec.get("pretrained") or spec.get("file"):
        return None
    if spec.get("seed") is None:
        return f"{spec.get('name')} was randomly initialised without a recorded seed"
    return None


def build_base_model(spec: Mapping[str, Any]) -> nn.Module:
    """Build a base model from a recipe written by :func:`create_model`.

    Raises:
        ValueError: If the recipe lacks a model name.
        FileNotFoundError: If the recipe names a weights file that does not exist.

    Examples:
        >>> spec = {"name": "vit_tiny_patch16_224", "seed": 1,
        ...         "kwargs": {"img_size": 32, "patch_size": 4}}
        >>> a, b = build_base_model(spec), build_base_model(spec)
        >>> bool(a.pos_embed.equal(b.pos_embed))
        True
    """
    import timm

    if spec.get("zoo") == "demo_vit":
        return demo_vit()
    name = spec.get("name")
    if not name:
        raise ValueError(f"base model recipe without a 'name': {dict(spec)}")
    kwargs = dict(spec.get("kwargs") or {})
    file = spec.get("file")
    pretrained = bool(spec.get("pretrained", False)) and file is None
    seed = spec.get("seed")
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(int(seed))
        model = timm.create_model(str(name), pretrained=pretrained, **kwargs)
    if file is not None:
        if not os.path.isfile(file):
            raise FileNotFoundError(f"base model weights file not found: {file}")
        state = torch.load(file, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    setattr(model, BASE_ATTR, {**dict(spec), "kwargs": kwargs})
    return model


def demo_vit() -> nn.Module:
    """The small ViT shipped with the package, pre-trained on clean CIFAR-10 (no download).

    A timm ``vit_tiny_patch16_224`` layout on 32x32 inputs (patch 4, width 128, depth 6;
    1.2M parameters) trained from scratch on 5,085 clean CIFAR-10 training images by
    ``examples/make_demo_assets.py``. It expects inputs normalized with mean = std = 0.5, which
    is what its timm ``pretrained_cfg`` says, so ``ps.wrap(demo_vit(), ...)`` normalizes right.

    Returns:
        The model (float32, eval mode), whose recipe lets ``ps.load(path)`` rebuild it.

    Examples:
        >>> import torch
        >>> vit = demo_vit()
        >>> vit(torch.zeros(1, 3, 32, 32)).shape
        torch.Size([1, 10])
    """
    from importlib import resources

    import timm

    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=10, **DEMO_VIT_KWARGS
    )
    weights = resources.files("peftsmoothing") / "assets" / "demo_vit.pt"
    with resources.as_file(weights) as path:
        state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict({k: v.float() for k, v in state.items()})
    setattr(model, BASE_ATTR, {"zoo": "demo_vit"})
    cfg = dict(getattr(model, "pretrained_cfg", {}))
    cfg["input_size"] = (3, 32, 32)  # timm's default for this name says 224
    setattr(model, "pretrained_cfg", cfg)  # noqa: B010
    return model.eval()
