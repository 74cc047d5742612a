"""Checking a base-model recipe read from a file, before anything is built from it.

A saved directory records how to rebuild its base model (``zoo.create_model``'s recipe). The
file may come from anyone, so ``check_recipe`` admits only a timm registry name, timm's own
pretrained tags, a seed and architecture options with plain, bounded values; then the model is
sized on the meta device (no memory, no weights) and refused above ``MAX_BYTES`` of parameters
and buffers, so a crafted recipe cannot make ``ps.load`` fetch, open or allocate what it names
(docs/security.md). ``check_numbers`` bounds the other numbers of a saved config (classes,
input size, method options).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from ..core.validation import is_int

__all__ = ["ARCHITECTURE_KWARGS", "MAX_BYTES", "MAX_DEPTH", "MAX_INPUT_SIDE", "MAX_OPTION_VALUE",
           "check_numbers", "check_recipe", "model_bytes"]  # fmt: skip

#: The largest magnitude of a number in a saved config (image size, width, rank, classes, ...).
MAX_OPTION_VALUE = 65_536
#: The largest image side a saved model may resize its inputs to (``spec.input_size``).
MAX_INPUT_SIDE = 4_096
#: The most blocks a recipe may ask for (``depth``, or the sum of ``depths`` / ``layers``):
#: building is linear in depth, even on the meta device. timm's deepest models have < 100.
MAX_DEPTH = 256
#: The most bytes of parameters and buffers a recipe read from a file may build (16 GiB:
#: ~4e9 fp32 parameters, twice timm's largest ViT). ``check_recipe`` reads this module
#: attribute at each call: raise it, or set it to ``None`` (no sizing at all), for a
#: directory you trust.
MAX_BYTES: int | None = 16 * 2**30

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
#: The recipe's plain fields, in order: default, what each must be, and the test.
_FIELD_RULES: dict[str, tuple[Any, str, Callable[[Any], bool]]] = {
    "pretrained": (
        False, "true, false or null (unknown)", lambda v: v is None or isinstance(v, bool)
    ),
    "seed": (None, "a non-negative integer", lambda v: v is None or (is_int(v) and v >= 0)),
    "kwargs": (None, "an object", lambda v: not v or isinstance(v, Mapping)),  # none: {}
    "file": (None, "a string", lambda v: v is None or isinstance(v, str)),
}
_PLAIN_TEXT = re.compile(r"(?:[A-Za-z][A-Za-z0-9_.\-]{0,63})?")  # not a number in disguise
#: The options that take a name (a string); every other option takes numbers or booleans.
_TEXT_OPTIONS = frozenset({"global_pool", "weight_init", "stem_type", "act_layer", "norm_layer"})
_DEPTH_OPTIONS = frozenset({"depth", "depths", "layers"})
_MODEL_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,128}")


def _plain_value(key: str, value: Any) -> bool:
    """A bounded number, a bool, None, a short identifier-like string (for the options that
    take a name), or a short list of bounded numbers."""
    if isinstance(value, str):
        return key in _TEXT_OPTIONS and _PLAIN_TEXT.fullmatch(value) is not None
    if isinstance(value, (list, tuple)):
        return len(value) <= 16 and all(
            (is_int(v) or isinstance(v, float)) and abs(v) <= MAX_OPTION_VALUE for v in value
        )
    return value is None or isinstance(value, bool) or (
        isinstance(value, (int, float)) and abs(value) <= MAX_OPTION_VALUE  # nan, inf: False
    )


def check_recipe(recipe: object, source: str = "recipe") -> dict[str, Any]:
    """Check a base-model recipe read from a file before anything is built from it.

    A recipe may only name a model in timm's registry (optionally with a pretrained tag that
    timm knows), ask for timm's own pretrained weights, give a seed, and set the architecture
    options in ``ARCHITECTURE_KWARGS`` to plain values (numbers up to ``MAX_OPTION_VALUE``);
    the model it describes may hold at most ``MAX_BYTES`` of parameters and buffers. Hub names
    (``hf-hub:``), local folders (``local-dir:``), URLs, paths and weight sources are refused,
    so a crafted saved directory cannot make the loader fetch, read, write or allocate what it
    names. A recorded weights ``file`` is kept as a hint only: it is never opened unless the
    user passes it.

    Args:
        recipe: The recipe (a dict from JSON).
        source: Where it was read, for error messages.

    Returns:
        A clean copy of the recipe.

    Raises:
        ValueError: Naming the first field that is not allowed, or the model's size.

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
    from timm.models import get_pretrained_cfg, is_model

    if not is_model(name):
        raise ValueError(f"{source}: {name!r} is not a model in timm's registry")
    try:
        get_pretrained_cfg(name)  # raises for a pretrained tag timm does not know
    except RuntimeError:
        raise ValueError(f"{source}: timm knows no pretrained tag {name!r}") from None
    clean: dict[str, Any] = {"name": name}
    for field, (default, need, valid) in _FIELD_RULES.items():
        clean[field] = recipe.get(field, default)
        if not valid(clean[field]):
            raise ValueError(f"{source}: {field!r} must be {need}, got {clean[field]!r}")
    kwargs = clean["kwargs"] or {}
    for key, value in kwargs.items():
        if key not in ARCHITECTURE_KWARGS:
            raise ValueError(
                f"{source}: refusing timm.create_model option {key!r}: a saved directory may "
                "only set architecture options (weights come from timm's registry or from "
                "base_weights=)"
            )
        if not _plain_value(key, value):
            raise ValueError(f"{source}: refusing value {value!r} for option {key!r}")
        blocks = value if isinstance(value, (list, tuple)) else [value or 0]  # None: 0 blocks
        if key in _DEPTH_OPTIONS and sum(abs(v) for v in blocks) > MAX_DEPTH:
            raise ValueError(
                f"{source}: refusing {key}={value!r}: more than "
                f"peftsmoothing.backbones.recipes.MAX_DEPTH = {MAX_DEPTH} blocks"
            )
    clean["kwargs"] = {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}
    limit = MAX_BYTES  # read at each call (see its comment)
    if limit is not None and (size := model_bytes(clean)) > limit:
        raise ValueError(
            f"{source}: refusing a recipe for {size:,} bytes of parameters and buffers "
            f"(more than peftsmoothing.backbones.recipes.MAX_BYTES = {limit:,}); raise that "
            "limit, or set it to None, if you trust this directory"
        )
    return clean


def model_bytes(recipe: Mapping[str, Any]) -> int:
    """Bytes of parameters and buffers of the timm model a checked recipe describes, built on
    the meta device (shapes only: no memory, no weights, nothing fetched). Each recipe is
    sized once per process.

    Raises:
        ValueError: If timm cannot build the model on the meta device (then its size is
            unknown, and the recipe is refused unless ``MAX_BYTES`` is ``None``).

    Examples:
        >>> model_bytes({"name": "vit_tiny_patch16_224", "kwargs": {"img_size": 32,
        ...              "patch_size": 4, "depth": 1, "num_classes": 10}})  # 469,258 fp32
        1877032
    """
    return _model_bytes(str(recipe["name"]), json.dumps(dict(recipe.get("kwargs") or {})))


@functools.lru_cache(maxsize=64)
def _model_bytes(name: str, kwargs: str) -> int:
    import timm
    import torch

    try:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False, **json.loads(kwargs))
    except (TypeError, ValueError, RuntimeError, NotImplementedError, AssertionError) as err:
        raise ValueError(
            f"cannot size {name!r} with options {kwargs} on the meta device ({err}); set "
            "peftsmoothing.backbones.recipes.MAX_BYTES = None to build it unsized, if you trust it"
        ) from None
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def check_numbers(value: object, source: str, limit: int = MAX_OPTION_VALUE) -> None:
    """Refuse a number of magnitude above ``limit`` (or not finite) anywhere in a JSON value.

    Used on a saved model's ``spec`` (number of classes, input size, method options such as a
    LoRA rank): each is bounded, so a crafted file cannot ask for an unbounded allocation.

    Raises:
        ValueError: Naming the first such number and where it is.

    Examples:
        >>> check_numbers({"num_classes": 10, "method_config": {"r": [8, 16]}}, "spec")
        >>> check_numbers({"method_config": {"r": 10**9}}, "spec")
        Traceback (most recent call last):
        ...
        ValueError: spec.method_config.r: refusing 1000000000 (numbers in a saved config are at most 65536 in magnitude)
    """  # noqa: E501
    if isinstance(value, Mapping):
        for key, item in value.items():
            check_numbers(item, f"{source}.{key}", limit)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_numbers(item, f"{source}[{i}]", limit)
    elif isinstance(value, (int, float)) and not abs(value) <= limit:  # nan and inf too
        raise ValueError(
            f"{source}: refusing {value!r} (numbers in a saved config are at most {limit} "
            "in magnitude)"
        )
