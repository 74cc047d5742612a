"""Building base models from a recorded recipe, so saved checkpoints can rebuild themselves.

[`create_model`][peftsmoothing.create_model] is ``timm.create_model`` that remembers how the model
was made; a model wrapped and saved afterwards records that recipe, and ``ps.load(path)`` rebuilds
the base model from it without being handed one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .recipes import ARCHITECTURE_KWARGS, check_recipe

__all__ = [
    "ARCHITECTURE_KWARGS",
    "BASE_ATTR",
    "DEMO_VIT_KWARGS",
    "build_base_model",
    "check_recipe",
    "check_weights_choice",
    "create_model",
    "demo_vit",
    "rebuild_base_model",
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


def rebuild_base_model(
    recipe: Mapping[str, Any],
    *,
    base_weights: str | os.PathLike[str] | None = None,
    pretrained: bool | None = None,
    source: str = "recipe",
    directory: str | os.PathLike[str] | None = None,
) -> nn.Module:
    """Build the base model a saved directory's recipe describes, after ``check_recipe``.

    Weights come from timm's registry entry for the recipe's name (``pretrained``), from the
    recorded seed (random initialisation), or from ``base_weights``, a ``state_dict`` file the
    caller names. A weights file recorded in the recipe is never opened on the recipe's say.

    Args:
        recipe: The recipe read from the directory.
        base_weights: A ``state_dict`` file to load into the rebuilt model (it replaces
            pretrained or seeded weights).
        pretrained: ``True``: timm's registry weights for the recipe's name, whatever the
            recipe records; ``False``: never timm's registry weights; ``None``: as recorded.
        source: Where the recipe was read, for error messages.
        directory: The saved directory the recipe was read from: also refuse a weights
            choice that cannot rebuild its backbone (``check_weights_choice``).

    Returns:
        The base model.

    Raises:
        ValueError: If the recipe is refused, was built from a weights file and
            ``base_weights`` is not given, both ``base_weights`` and ``pretrained=True``
            are given, or (with ``directory``) ``check_weights_choice`` refuses.
        FileNotFoundError: If ``base_weights`` does not exist.

    Examples:
        >>> m = rebuild_base_model({"name": "vit_tiny_patch16_224", "seed": 0,
        ...                         "kwargs": {"img_size": 32, "patch_size": 4}})
        >>> m.patch_embed.proj.kernel_size
        (4, 4)
    """
    clean = check_recipe(recipe, source)
    if directory is not None:
        check_weights_choice(clean, directory, base_weights=base_weights, pretrained=pretrained)
    if base_weights is not None and pretrained:
        raise ValueError(
            "pass either base_weights=FILE or pretrained=True (timm's registry weights), not both"
        )
    if base_weights is None and clean.get("file"):
        raise ValueError(
            f"{source}: the base model's weights came from a local file (recorded as "
            f"{clean['file']!r}); files named inside a saved directory are not opened: pass "
            "it yourself with base_weights=FILE (CLI: --base-weights FILE)"
        )
    if base_weights is not None:
        clean = {**clean, "pretrained": False, "file": None}
    elif pretrained is not None:
        clean = {**clean, "pretrained": pretrained}
    model = build_base_model(clean)
    if base_weights is not None:
        load_weights(model, base_weights)
        setattr(model, BASE_ATTR, {**clean, "file": os.path.abspath(base_weights)})
    return model


def check_weights_choice(
    recipe: Mapping[str, Any],
    path: str | os.PathLike[str],
    *,
    base_weights: str | os.PathLike[str] | None = None,
    pretrained: bool | None = None,
) -> None:
    """Refuse a weights choice for ``load(path)`` that cannot rebuild the trained-on backbone.

    ``base_weights=FILE`` or ``pretrained=True`` (timm's registry weights) always say which
    weights to use (not both). Without them the recipe must: a recorded seed or the shipped
    model. A recipe with timm's registry weights (``pretrained: true``) needs the caller's
    ``pretrained=True``: nothing is downloaded on a saved file's say. A plain
    ``timm.create_model`` model records ``pretrained: null``: its weights are not known, so
    the caller is asked to choose.

    Args:
        recipe: The checked recipe (``check_recipe``).
        path: The saved directory, for messages.
        base_weights: The caller's weights file, if any.
        pretrained: The caller's choice (``None``: as recorded).

    Raises:
        ValueError: Saying which argument (or CLI flag) chooses the weights.

    Examples:
        >>> check_weights_choice({"name": "resnet18", "pretrained": None}, "run",
        ...                      pretrained=True)
        >>> check_weights_choice({"name": "resnet18", "pretrained": None}, "run")
        Traceback (most recent call last):
        ...
        ValueError: run: cannot rebuild its base model: resnet18 was made with ...
    """
    name = recipe.get("name") or recipe.get("zoo")
    if base_weights is not None and pretrained:
        raise ValueError(
            "pass either base_weights=FILE or pretrained=True (timm's registry weights), not both"
        )
    if base_weights is not None or pretrained:
        return
    if recipe.get("pretrained"):  # a download happens only on the caller's say
        why = ("pretrained=False forbids them" if pretrained is False
               else "loading never downloads on a saved file's say")  # fmt: skip
        raise ValueError(
            f"{path}: its base model {name} holds timm's registry weights, and {why}: pass "
            "pretrained=True (timm's registry weights, downloaded on first use; CLI: "
            "--pretrained) or base_weights=FILE with those weights (CLI: --base-weights FILE)"
        )
    reason = unreproducible_reason(recipe)
    if reason is None:
        return
    if recipe.get("name") and "pretrained" in recipe and recipe["pretrained"] is None:
        raise ValueError(
            f"{path}: cannot rebuild its base model: {reason}. Say which weights to use: "
            "base_weights=FILE (a state_dict of the backbone you wrapped; CLI: "
            f"--base-weights FILE) or pretrained=True (timm's registry weights for {name}, "
            "downloaded on first use; CLI: --pretrained). The frozen-weights fingerprint "
            "refuses either if it is not the backbone the model was trained on"
        )
    raise ValueError(
        f"{path}: cannot rebuild its base model: {reason}, so a rebuilt one would have "
        "other weights. Call ps.load(base_model, path) with the original base model "
        "(next time: ps.create_model(..., seed=N) or file=...)"
    )


def load_weights(model: nn.Module, file: str | os.PathLike[str]) -> None:
    """Load the ``state_dict`` in ``file`` (read with ``weights_only=True``) into ``model``.

    Raises:
        FileNotFoundError: If ``file`` does not exist.
        ValueError: If it holds no readable ``state_dict``, or one that does not fit.

    Examples:
        >>> load_weights(nn.Linear(2, 2), "no/such/file.pt")
        Traceback (most recent call last):
        ...
        FileNotFoundError: base model weights file not found: no/such/file.pt
    """
    if not os.path.isfile(file):
        raise FileNotFoundError(f"base model weights file not found: {file}")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a corrupt or foreign file
        raise ValueError(f"{file}: cannot read a state_dict from it ({err})") from None
    if not isinstance(state, Mapping):
        raise ValueError(f"{file}: expected a state_dict, got a {type(state).__name__}")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        detail = " ".join(str(err).split())
        raise ValueError(f"{file}: the weights do not fit the model: {detail}") from None


def create_model(
    name: str,
    pretrained: bool = False,
    *,
    file: str | os.PathLike[str] | None = None,
    seed: int | None = None,
    **kwargs: Any,
) -> nn.Module:
    """``timm.create_model`` that records its recipe for [`peftsmoothing.load`][peftsmoothing.load].

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
    file = os.path.abspath(file) if file is not None else None
    return build_base_model(
        {"name": name, "pretrained": bool(pretrained), "kwargs": kwargs, "file": file, "seed": seed}
    )


def unreproducible_reason(spec: Mapping[str, Any]) -> str | None:
    """Why a recipe cannot rebuild the same weights, or ``None`` if it can.

    A randomly initialised model (no pretrained weights, no weights file) can only be rebuilt
    when its seed was recorded.

    Examples:
        >>> unreproducible_reason({"name": "vit_tiny_patch16_224", "seed": 0}) is None
        True
        >>> print(unreproducible_reason({"name": "vit_tiny_patch16_224"}))
        vit_tiny_patch16_224 was randomly initialised without a recorded seed
        >>> reason = unreproducible_reason({"name": "resnet18", "pretrained": None})
        >>> reason.startswith("resnet18 was made with timm.create_model outside peftsmoothing")
        True
    """
    if spec.get("zoo") or spec.get("pretrained") or spec.get("file"):
        return None
    if "pretrained" in spec and spec["pretrained"] is None:
        return (
            f"{spec.get('name')} was made with timm.create_model outside peftsmoothing, so "
            "whether it held timm's pretrained weights is not recorded"
        )
    if spec.get("seed") is None:
        return f"{spec.get('name')} was randomly initialised without a recorded seed"
    return None


def build_base_model(spec: Mapping[str, Any]) -> nn.Module:
    """Build a base model from a recipe written by [`create_model`][peftsmoothing.create_model].

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
    with torch.random.fork_rng(devices=[]):  # a seeded build leaves the global stream as it was
        if spec.get("seed") is not None:
            torch.manual_seed(int(spec["seed"]))
        model = timm.create_model(str(name), pretrained=pretrained, **kwargs)
    if file is not None:
        load_weights(model, file)
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
        "vit_tiny_patch16_224",
        num_classes=10,
        pretrained_cfg_overlay={"input_size": (3, 32, 32)},  # the name's default says 224
        **DEMO_VIT_KWARGS,
    )
    weights = resources.files("peftsmoothing") / "assets" / "demo_vit.pt"
    with resources.as_file(weights) as path:  # stored in fp16; loading casts to the fp32 model
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    setattr(model, BASE_ATTR, {"zoo": "demo_vit"})
    return model.eval()
