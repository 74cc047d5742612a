"""Checking a base-model recipe read from a file, before anything is built from it.

A saved directory records how to rebuild its base model (``zoo.create_model``'s recipe). The
file may come from anyone, so ``check_recipe`` admits only a timm registry name, timm's own
pretrained tags, a seed and architecture options with plain, bounded values; then the model is
sized on the meta device (no memory, no weights) and refused above ``MAX_PARAMETERS``, so a
crafted recipe cannot make ``ps.load`` fetch, open or allocate what it names (docs/security.md).
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Mapping
from typing import Any

from .validation import is_int

__all__ = ["ARCHITECTURE_KWARGS", "MAX_OPTION_VALUE", "MAX_PARAMETERS", "check_recipe",
           "count_parameters"]  # fmt: skip

#: The largest magnitude of a number in a recipe's options (image size, width, depth, ...).
MAX_OPTION_VALUE = 65_536
#: The most parameters a recipe read from a file may build (4e9: 16 GB in fp32, twice timm's
#: largest ViT); ``check_recipe`` reads this module attribute, so it can be raised at run time.
MAX_PARAMETERS = 4_000_000_000

#: ``timm.create_model`` options a saved recipe may carry: architecture settings only. Anything
#: that names a file, a folder, a URL, a hub repository or a pretrained-weights source
#: (``pretrained_cfg``, ``pretrained_cfg_overlay``, ``checkpoint_path``, ``cache_dir``, ...) is
#: refused when a recipe is read from a saved directory (docs/security.md).
ARCHITECTURE_KWARGS: frozenset[str] = frozenset({
    "num_classes", "in_chans", "img_size", "patch_size", "embed_dim", "depth", "num_heads",
    "mlp_ratio", "qkv_bias", "qk_norm", "proj_bias", "init_values", "class_token",
    "no_embed_class", "reg_tokens", "pre_norm", "final_norm", "fc_norm", "global_pool",
    "dynamic_img_size", "dynamic_img_pad", "drop_rate", "pos_drop_rate", "patch_drop_rate",
    "proj_drop_rate", "attn_drop_rate", "drop_path_rate", "weight_init", "embed_dims",
    "depths", "dims", "layers", "channels", "widths", "num_features", "window_size",
    "output_stride", "stem_type", "stem_width", "width_factor", "width_multiplier",
    "head_hidden_size", "distilled", "ls_init_value", "act_layer", "norm_layer",
})  # fmt: skip

#: Recipe fields ``check_recipe`` understands.
_RECIPE_FIELDS = frozenset({"name", "pretrained", "kwargs", "file", "seed", "zoo"})
_ZOO = frozenset({"demo_vit"})
_PLAIN_TEXT = re.compile(r"[A-Za-z0-9_.\-]{0,64}")
_MODEL_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,128}")


def _plain_value(value: Any) -> bool:
    """A bounded number, a bool, None, a short identifier-like string, or a short list of
    bounded numbers."""
    if value is None or isinstance(value, bool):
        return True
    if isinstance(value, int):
        return abs(value) <= MAX_OPTION_VALUE
    if isinstance(value, float):
        return math.isfinite(value) and abs(value) <= MAX_OPTION_VALUE
    if isinstance(value, str):
        return _PLAIN_TEXT.fullmatch(value) is not None
    if isinstance(value, (list, tuple)):
        return len(value) <= 16 and all(
            (is_int(v) or isinstance(v, float)) and _plain_value(v) for v in value
        )
    return False


def check_recipe(recipe: object, source: str = "recipe") -> dict[str, Any]:
    """Check a base-model recipe read from a file before anything is built from it.

    A recipe may only name a model in timm's registry (optionally with a pretrained tag that
    timm knows), ask for timm's own pretrained weights, give a seed, and set the architecture
    options in ``ARCHITECTURE_KWARGS`` to plain values (numbers up to ``MAX_OPTION_VALUE``);
    the model it describes may have at most ``MAX_PARAMETERS`` parameters. Hub names
    (``hf-hub:``), local folders (``local-dir:``), URLs, paths and weight sources are refused,
    so a crafted saved directory cannot make the loader fetch, read, write or allocate what it
    names. A recorded
    weights ``file`` is kept as a hint only: it is never opened unless the user passes it.

    Args:
        recipe: The recipe (a dict from JSON).
        source: Where it was read, for error messages.

    Returns:
        A clean copy of the recipe.

    Raises:
        ValueError: Naming the first field that is not allowed, or the parameter count.

    Examples:
        >>> check_recipe({"name": "vit_tiny_patch16_224", "seed": 0,
        ...               "kwargs": {"img_size": 32}})["kwargs"]
        {'img_size': 32}
        >>> check_recipe({"name": "hf-hub:someone/model"})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: recipe: refusing model name 'hf-hub:someone/model': only names in timm's ...
    """
    if not isinstance(recipe, Mapping):
        raise ValueError(f"{source}: the base-model recipe must be an object, got {recipe!r}")
    unknown = sorted(str(k) for k in recipe if k not in _RECIPE_FIELDS)
    if unknown:
        raise ValueError(f"{source}: refusing unknown base-model recipe fields {unknown}")
    clean: dict[str, Any] = {}
    zoo = recipe.get("zoo")
    if zoo is not None:
        if zoo not in _ZOO:
            raise ValueError(f"{source}: unknown shipped model {zoo!r}")
        return {"zoo": zoo}
    name = recipe.get("name")
    if not isinstance(name, str) or _MODEL_NAME.fullmatch(name) is None:
        raise ValueError(
            f"{source}: refusing model name {name!r}: only names in timm's registry can be "
            "rebuilt from a saved directory"
        )
    import timm

    if not timm.is_model(name):
        raise ValueError(f"{source}: {name!r} is not a model in timm's registry")
    if "." in name:
        from timm.models import get_pretrained_cfg

        try:
            get_pretrained_cfg(name)
        except RuntimeError:
            raise ValueError(f"{source}: timm knows no pretrained tag {name!r}") from None
    clean["name"] = name
    pretrained = recipe.get("pretrained", False)
    if pretrained is not None and not isinstance(pretrained, bool):
        raise ValueError(
            f"{source}: 'pretrained' must be true, false or null (unknown), got {pretrained!r}"
        )
    clean["pretrained"] = pretrained
    seed = recipe.get("seed")
    if seed is not None and (not is_int(seed) or seed < 0):
        raise ValueError(f"{source}: 'seed' must be a non-negative integer, got {seed!r}")
    clean["seed"] = seed
    kwargs = recipe.get("kwargs") or {}
    if not isinstance(kwargs, Mapping):
        raise ValueError(f"{source}: 'kwargs' must be an object, got {kwargs!r}")
    for key, value in kwargs.items():
        if key not in ARCHITECTURE_KWARGS:
            raise ValueError(
                f"{source}: refusing timm.create_model option {key!r}: a saved directory may "
                "only set architecture options (weights come from timm's registry or from "
                "base_weights=)"
            )
        if not _plain_value(value):
            raise ValueError(f"{source}: refusing value {value!r} for option {key!r}")
    clean["kwargs"] = {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}
    file = recipe.get("file")
    if file is not None and not isinstance(file, str):
        raise ValueError(f"{source}: 'file' must be a string, got {file!r}")
    clean["file"] = file
    size = count_parameters(clean)
    if size is not None and size > MAX_PARAMETERS:
        raise ValueError(
            f"{source}: refusing a recipe for {size:,} parameters (more than "
            f"peftsmoothing.recipes.MAX_PARAMETERS = {MAX_PARAMETERS:,}); raise that limit if "
            "you trust this directory"
        )
    return clean


def count_parameters(recipe: Mapping[str, Any]) -> int | None:
    """The parameter count of the timm model a checked recipe describes, built on the meta
    device (shapes only: no memory, no weights, nothing fetched).

    Returns ``None`` (with a warning) for a model timm cannot build on the meta device.

    Examples:
        >>> count_parameters({"name": "vit_tiny_patch16_224", "kwargs": {"img_size": 32,
        ...                   "patch_size": 4, "depth": 1, "num_classes": 10}})
        469258
    """
    import timm
    import torch

    try:
        with torch.device("meta"):
            model = timm.create_model(
                str(recipe["name"]), pretrained=False, **dict(recipe.get("kwargs") or {})
            )
    except (TypeError, ValueError, RuntimeError, NotImplementedError) as err:
        warnings.warn(
            f"could not size {recipe.get('name')!r} on the meta device ({err}); building it",
            UserWarning,
            stacklevel=3,
        )
        return None
    return sum(p.numel() for p in model.parameters())
