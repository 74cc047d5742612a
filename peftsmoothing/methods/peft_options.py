"""The peft config options the ``peft`` method accepts: an allow-list per config class.

A peft config may come from a file (a saved model's ``peftsmoothing.json`` or an adapter
directory's ``adapter_config.json``), and some peft options do far more than shape an adapter:
``megatron_config`` imports a module, ``modules_to_save`` and ``bias="all"`` train backbone
tensors (invariant 3), LoftQ / EVA / CorDA / PiSSA initializations rewrite the frozen weights or
need data, ``layer_replication`` copies backbone layers. Rather than refusing the risky options
one by one (and missing those a newer peft adds), each config class has a list of **reviewed**
options: adapter shape and hyper-parameters that touch nothing but the adapter. Every other
option must keep its default value, and a few reviewed options are limited to reviewed values.
Metadata (``peft_type``, ``peft_version``, ``base_model_name_or_path``, ...) is never used to
fetch or build anything here (``inject_adapter_in_model`` is given our model) and may be anything.

Examples:
    >>> from peft import LoraConfig
    >>> check_reviewed_options(LoraConfig(r=4, target_modules=["qkv"], use_dora=True), "peft")
    >>> check_reviewed_options(LoraConfig(target_modules=["qkv"], layer_replication=[(0, 2)]),
    ...                        "peft")
    Traceback (most recent call last):
    ...
    ValueError: peft: LoraConfig option layer_replication=[(0, 2)] is not supported (the peft method accepts only reviewed options at other than their defaults: see peftsmoothing.methods.peft_options)
"""  # noqa: E501

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["METADATA", "REVIEWED", "REVIEWED_VALUES", "check_reviewed_options"]

#: Options that only describe a config (no effect on what ``inject_adapter_in_model`` builds
#: here); ``inference_mode`` is set to ``False`` by the method itself.
METADATA: frozenset[str] = frozenset(
    {"peft_type", "task_type", "auto_mapping", "peft_version", "base_model_name_or_path",
     "revision", "inference_mode"}
)  # fmt: skip

_LAYERS = frozenset(
    {"r", "target_modules", "exclude_modules", "layers_to_transform", "layers_pattern",
     "rank_pattern", "alpha_pattern"}
)  # fmt: skip
_LYCORIS = _LAYERS | {"alpha", "rank_dropout", "module_dropout", "use_effective_conv2d",
                      "init_weights"}  # fmt: skip

#: Per config class, the options that may differ from their defaults: they shape and
#: initialize the adapter only (data-free), and train nothing of the backbone.
REVIEWED: Mapping[str, frozenset[str]] = {
    "LoraConfig": _LAYERS | {"lora_alpha", "lora_dropout", "fan_in_fan_out", "bias", "use_rslora",
                             "init_lora_weights", "use_dora", "lora_bias"},
    "LoHaConfig": _LYCORIS,
    "LoKrConfig": _LYCORIS | {"decompose_both", "decompose_factor", "rank_dropout_scale"},
    "IA3Config": frozenset({"target_modules", "exclude_modules", "feedforward_modules",
                            "fan_in_fan_out", "init_ia3_weights"}),
    "OFTConfig": frozenset({"r", "oft_block_size", "module_dropout", "target_modules",
                            "exclude_modules", "fan_in_fan_out", "bias", "init_weights",
                            "layers_to_transform", "layers_pattern", "coft", "eps",
                            "block_share", "use_cayley_neumann", "num_cayley_neumann_terms"}),
}  # fmt: skip

_INIT = (True, False)
#: Reviewed options limited further: ``bias`` other than ``"none"`` trains the backbone's
#: biases; the other initializations (PiSSA, OLoRA, LoftQ, EVA, ...) rewrite the frozen
#: weights or need data.
REVIEWED_VALUES: Mapping[str, Mapping[str, tuple[object, ...]]] = {
    "LoraConfig": {"bias": ("none",), "init_lora_weights": (*_INIT, "gaussian")},
    "LoHaConfig": {"init_weights": _INIT},
    "LoKrConfig": {"init_weights": (*_INIT, "lycoris")},
    "IA3Config": {"init_ia3_weights": _INIT},
    "OFTConfig": {"bias": ("none",), "init_weights": _INIT},
}

_SEE = (
    "(the peft method accepts only reviewed options at other than their defaults: see "
    "peftsmoothing.methods.peft_options)"
)


_COLLECTIONS = (set, frozenset, list, tuple)


def _same(a: object, b: object) -> bool:
    """Equal values of the same type (``True`` is not ``1``); collections compared as sets."""
    if isinstance(a, _COLLECTIONS) and isinstance(b, _COLLECTIONS):
        return sorted(map(repr, a)) == sorted(map(repr, b))
    return type(a) is type(b) and a == b


def check_reviewed_options(config: Any, source: str) -> None:
    """Refuse a peft config that sets an unreviewed option, or a reviewed one to an unreviewed
    value.

    Args:
        config: A peft config object of a class in ``REVIEWED``.
        source: Where the config came from, for messages.

    Raises:
        ValueError: Naming the first such option and its value.

    Examples:
        >>> from peft import IA3Config
        >>> check_reviewed_options(IA3Config(target_modules=["fc2"]), "peft")  # passes
    """
    name = type(config).__name__
    if name not in REVIEWED:
        raise ValueError(f"{source}: peft config class {name!r} is not allowed")
    if getattr(config, "_custom_modules", None):  # peft's hook for user-defined layer classes
        raise ValueError(f"{source}: custom peft layer classes (_register_custom_module) are not "
                         "supported")  # fmt: skip
    reviewed, limited = REVIEWED[name], REVIEWED_VALUES.get(name, {})
    default = type(config)()
    for option in sorted(vars(config)):
        if option.startswith("_") or option in METADATA:
            continue
        value = getattr(config, option)
        if option in limited and not any(_same(value, ok) for ok in limited[option]):
            allowed = ", ".join(repr(v) for v in limited[option])
            raise ValueError(
                f"{source}: {option}={value!r} is not supported (it trains or rewrites the "
                f"frozen backbone, or needs data); use one of {allowed}"
            )
        if option not in reviewed and not _same(value, getattr(default, option, None)):
            raise ValueError(f"{source}: {name} option {option}={value!r} is not supported {_SEE}")
