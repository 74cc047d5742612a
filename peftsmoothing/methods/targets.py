"""Finding and replacing the sub-modules a method targets (shared by methods and ``wrap``).

A public leaf module: plug-in methods may use it too. It imports nothing from peftsmoothing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn

__all__ = ["as_patterns", "get_submodule", "match_modules", "replace_module"]


def as_patterns(patterns: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """A ``target_modules`` option in its normal form: a tuple of patterns, or ``None``.

    Examples:
        >>> as_patterns("qkv"), as_patterns(["fc1", "fc2"]), as_patterns(None)
        (('qkv',), ('fc1', 'fc2'), None)
    """
    if patterns is None:
        return None
    if isinstance(patterns, str):
        return (patterns,)
    return tuple(patterns)


def _matches(pattern: str, name: str) -> bool:
    if name == pattern or name.endswith("." + pattern):
        return True
    try:
        return re.fullmatch(pattern, name) is not None
    except re.error:
        return False


def match_modules(
    model: nn.Module,
    patterns: str | Sequence[str],
    types: tuple[type[nn.Module], ...],
    method: str,
) -> list[tuple[str, nn.Module]]:
    """Return the ``(name, module)`` pairs whose qualified name matches any pattern.

    A pattern matches a module name when it equals the name, equals its dotted suffix
    (``"qkv"`` matches ``"blocks.0.attn.qkv"``) or is a regular expression that fully matches it.
    Only modules of ``types`` are returned.

    Raises:
        ValueError: If a pattern matches no module of a supported type; the message lists the
            candidate module names.

    Examples:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
        >>> [name for name, _ in match_modules(net, ["0", "2"], (nn.Linear,), "demo")]
        ['0', '2']
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    if not patterns:
        raise ValueError(f"{method}: target_modules is empty")
    named = [(n, m) for n, m in model.named_modules() if n]
    found: dict[str, nn.Module] = {}
    for pattern in patterns:
        hits = [(n, m) for n, m in named if _matches(pattern, n)]
        good = [(n, m) for n, m in hits if isinstance(m, types)]
        if not good:
            candidates = [n for n, m in named if isinstance(m, types)]
            shown = ", ".join(candidates[:25]) + (" ..." if len(candidates) > 25 else "")
            matched = ", ".join(f"{n} ({type(m).__name__})" for n, m in hits[:5])
            bad = f" (it matched {matched}, which {method} cannot adapt)" if hits else ""
            type_names = ", ".join(t.__name__ for t in types)
            raise ValueError(
                f"{method}: target_modules pattern {pattern!r} matches no {type_names} module"
                f"{bad}. Candidate modules: {shown or '(none)'}"
            )
        found.update(good)
    return list(found.items())


def get_submodule(model: nn.Module, name: str) -> nn.Module:
    """``model.get_submodule(name)`` with an error that lists top-level children.

    Raises:
        ValueError: If ``model`` has no sub-module ``name``.

    Examples:
        >>> from torch import nn
        >>> get_submodule(nn.Sequential(nn.Linear(2, 2)), "0")
        Linear(in_features=2, out_features=2, bias=True)
    """
    try:
        return model.get_submodule(name)
    except AttributeError:
        children = ", ".join(n for n, _ in model.named_children())
        raise ValueError(
            f"model has no sub-module {name!r}; its top-level modules are: {children}"
        ) from None


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the sub-module at dotted path ``name`` with ``new``.

    Examples:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(2, 2))
        >>> replace_module(net, "0", nn.Identity())
        >>> net
        Sequential(
          (0): Identity()
        )
    """
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
