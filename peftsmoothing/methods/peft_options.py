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
``check_patterns`` bounds the module names and regular expressions of a config read from a file,
so that matching them against the model's module names cannot take exponential time, and
``check_work`` the options that set how much work each forward pass or merge does.

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

import re
import sys
from collections.abc import Mapping
from typing import Any

if sys.version_info >= (3, 11):
    from re import _parser as sre_parse
else:  # Python 3.10
    import sre_parse

__all__ = ["MAX_NAMES", "MAX_PATTERN_CHARS", "MAX_PATTERN_WORK", "MAX_WORK", "METADATA",
           "REVIEWED", "REVIEWED_VALUES", "check_patterns", "check_reviewed_options",
           "check_work"]  # fmt: skip

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
#: What to do instead of setting an unreviewed option, where there is something else to do.
_INSTEAD = {"modules_to_save": "(wrap trains the head itself: num_classes= or train_head=True)"}


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
        config: A peft config object of a class in ``REVIEWED`` (the ``peft`` method has
            refused every other class before it calls this).
        source: Where the config came from, for messages.

    Raises:
        ValueError: Naming the first such option and its value.

    Examples:
        >>> from peft import IA3Config
        >>> check_reviewed_options(IA3Config(target_modules=["fc2"]), "peft")  # passes
    """
    name = type(config).__name__
    if getattr(config, "_custom_modules", None):  # peft's hook for user-defined layer classes
        raise ValueError(f"{source}: custom peft layer classes (_register_custom_module) are not "
                         "supported")  # fmt: skip
    reviewed, limited = REVIEWED[name], REVIEWED_VALUES[name]
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
            hint = _INSTEAD.get(option, _SEE)
            raise ValueError(f"{source}: {name} option {option}={value!r} is not supported {hint}")


#: The reviewed options that repeat work on every forward pass or merge, and the most a peft
#: config read from a file may ask for: OFT's Cayley-Neumann series runs one batched matrix
#: product per term and adapted layer (peft's default is 5 terms; beyond a few dozen the
#: series gains nothing). The other reviewed options shape the adapter, whose size is bounded
#: on the meta device, or are probabilities and flags.
MAX_WORK: Mapping[str, int] = {"num_cayley_neumann_terms": 64}


def check_work(config: Any, source: str) -> None:
    """Refuse a peft config read from a file that repeats work beyond ``MAX_WORK``.

    Args:
        config: A peft config object.
        source: Where the config came from, for messages.

    Raises:
        ValueError: Naming the option, its value and the bound.

    Examples:
        >>> from peft import OFTConfig
        >>> check_work(OFTConfig(oft_block_size=8, num_cayley_neumann_terms=8), "f")
        >>> check_work(OFTConfig(oft_block_size=8, num_cayley_neumann_terms=65536), "f")
        Traceback (most recent call last):
        ...
        ValueError: f: num_cayley_neumann_terms=65536: refusing more than 64 (each one is a matrix product per adapted layer on every merge)
    """  # noqa: E501
    for option, most in MAX_WORK.items():
        value = getattr(config, option, None)
        if isinstance(value, int) and value > most:
            raise ValueError(
                f"{source}: {option}={value}: refusing more than {most} (each one is a matrix "
                "product per adapted layer on every merge)"
            )


#: The longest module name or regular expression a peft config read from a file may give.
MAX_PATTERN_CHARS = 256
#: The most entries of a list of module names, of ``layers_to_transform`` / ``layers_pattern``,
#: or of ``rank_pattern`` / ``alpha_pattern``, in a peft config read from a file.
MAX_NAMES = 1024
#: The most backtracking the regular expressions of a peft config read from a file may ask
#: for together: each counts its alternatives (``|`` branches and optional parts, multiplied)
#: times 64 per repeat (``*``, ``+``, ``{m,n}``), so one pattern may have e.g. three repeats
#: and 16 alternatives (``.*\.blocks\.\d+\.(q|k|v)_\w+``), or a thousand module names
#: may each be a ``rank_pattern`` key.
MAX_PATTERN_WORK = 16 * 64**3
_REPEAT_WORK = 64

#: How peft matches each option that names modules: a string is a regular expression matched
#: in full; each ``layers_pattern`` entry and ``rank_pattern`` / ``alpha_pattern`` key is put
#: into the expression shown (peft's ``check_target_module_exists`` and ``get_pattern_key``).
_FULL_MATCH = ("target_modules", "exclude_modules", "feedforward_modules")
_TEMPLATES = {
    "layers_pattern": r"(?:^|.*?\.){}\.(?P<idx>\d+)\.",
    "rank_pattern": r"(.*\.)?({})$",
    "alpha_pattern": r"(.*\.)?({})$",
}
_ATOMS = frozenset({"LITERAL", "NOT_LITERAL", "ANY", "IN"})  # one character each
_REPEATS = frozenset({"MAX_REPEAT", "MIN_REPEAT"})


def check_patterns(config: Any, source: str) -> None:
    r"""Refuse module names and regular expressions of a peft config that could make matching
    them against a model's module names take exponential (or very long) time.

    For configs read from a file (a saved model's, an adapter directory's): module names and
    expressions are at most ``MAX_PATTERN_CHARS`` long, lists at most ``MAX_NAMES`` long; an
    expression may repeat (``*``, ``+``, ``{m,n}``) only a single character or class (no
    nested quantifiers such as ``(a*)*``), may not use backreferences, and all of them
    together stay within ``MAX_PATTERN_WORK``.

    Args:
        config: A peft config object.
        source: Where the config came from, for messages.

    Raises:
        ValueError: Naming the option and the pattern refused.

    Examples:
        >>> from peft import LoraConfig
        >>> check_patterns(LoraConfig(target_modules=r".*\.blocks\.\d+\.attn\.qkv"), "peft")
        >>> check_patterns(LoraConfig(target_modules="(.*.*)*X"), "peft")
        Traceback (most recent call last):
        ...
        ValueError: peft: target_modules='(.*.*)*X': refusing a repeated group (a nested quantifier); a saved peft config may repeat only single characters or classes
    """  # noqa: E501
    _check_shapes(config, source)
    work = 0
    for option in (*_FULL_MATCH, *_TEMPLATES, "layers_to_transform"):
        value = getattr(config, option, None)
        where = f"{source}: {option}"
        if isinstance(value, str) and option in _FULL_MATCH:
            work += _regex_work(value, value, where)
            continue
        items = [value] if isinstance(value, (str, int)) else list(value or ())
        if len(items) > MAX_NAMES:
            raise ValueError(f"{where}: refusing {len(items)} entries (at most {MAX_NAMES})")
        if option == "layers_to_transform":
            continue  # numbers, bounded with the rest of the file
        for item in items:
            if not isinstance(item, str) or len(item) > MAX_PATTERN_CHARS:
                raise ValueError(
                    f"{where}: refusing {item!r} (module names are strings of at most "
                    f"{MAX_PATTERN_CHARS} characters)"
                )
            if option in _TEMPLATES:
                work += _regex_work(item, _TEMPLATES[option].format(item), where)
    if work > MAX_PATTERN_WORK:
        raise ValueError(
            f"{source}: refusing regular expressions that may backtrack {work:,} ways (at most "
            f"peftsmoothing.methods.peft_options.MAX_PATTERN_WORK = {MAX_PATTERN_WORK:,})"
        )


def _number(value: object, kinds: tuple[type, ...] = (int,)) -> bool:
    """An integer, or a number of one of ``kinds``; never a ``bool``."""
    return isinstance(value, kinds) and not isinstance(value, bool)


def _check_shapes(config: Any, source: str) -> None:
    """Refuse ``rank_pattern`` / ``alpha_pattern`` that are not objects of module name ->
    rank (integer) / alpha (number), and ``layers_to_transform`` that is not an integer or a
    list of them: peft would fail on them with a traceback."""
    for option, kinds, what in (
        ("rank_pattern", (int,), "a JSON object of module name -> integer"),
        ("alpha_pattern", (int, float), "a JSON object of module name -> number"),
        ("layers_to_transform", (int,), "an integer or a list of integers"),
    ):
        value = getattr(config, option, None)
        if option == "layers_to_transform":
            ok = _number(value) or (isinstance(value, list) and all(map(_number, value)))
        else:
            ok = isinstance(value, Mapping) and all(
                isinstance(k, str) and _number(v, kinds) for k, v in value.items()
            )
        if value is not None and not ok:
            raise ValueError(f"{source}: {option} must be {what}, got {value!r:.80}")


def _regex_work(value: str, pattern: str, where: str) -> int:
    """The backtracking ``pattern`` (the one peft compiles for ``value``) may ask for."""
    if len(value) > MAX_PATTERN_CHARS:
        raise ValueError(f"{where}: refusing {len(value)} characters (at most {MAX_PATTERN_CHARS})")
    try:
        parsed = sre_parse.parse(pattern)
    except (re.error, RecursionError, OverflowError) as err:
        raise ValueError(f"{where}={value!r} is not a valid regular expression ({err})") from None
    return _work(parsed, f"{where}={value!r}")


def _work(parsed: Any, where: str) -> int:
    """Alternatives times ``_REPEAT_WORK`` per repeat, over a parsed expression."""
    alternatives, repeats = 1, 0
    for op, value in parsed:
        name = str(getattr(op, "name", op))
        if name in _ATOMS or name == "AT":
            continue
        if name in _REPEATS:
            low, high, body = value
            if high > 1:
                if len(body) != 1 or str(getattr(body[0][0], "name", "")) not in _ATOMS:
                    raise ValueError(
                        f"{where}: refusing a repeated group (a nested quantifier); a saved peft "
                        "config may repeat only single characters or classes"
                    )
                repeats += 1
                continue
            alternatives *= 2 if low == 0 else 1  # optional: matched or skipped
            inner = [body]
        elif name in ("SUBPATTERN", "ASSERT", "ASSERT_NOT"):
            inner = [value[-1]]  # the pattern of a group or a lookaround
        elif name == "BRANCH":
            inner = list(value[1])
            alternatives *= len(inner)
        else:  # GROUPREF (backreferences), conditionals, ...
            raise ValueError(f"{where}: refusing {name.lower()} in a saved peft config")
        for sub in inner:
            alternatives *= _work(sub, where)
    return alternatives * _REPEAT_WORK**repeats
