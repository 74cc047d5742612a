"""Method registry: built-in and third-party PEFT methods register the same way.

A *method* is a subclass of :class:`Method` with a frozen dataclass ``Config``. Methods are added
with the :func:`register_method` decorator, or by third-party packages through the entry-point
group ``peftsmoothing.methods`` (discovered lazily, the first time a name is looked up or the
list of methods is requested). The core of the library never names a method.
"""

from __future__ import annotations

import dataclasses
import difflib
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, ClassVar, TypeVar

from torch import nn

__all__ = [
    "ENTRY_POINT_GROUP",
    "Method",
    "MethodConfig",
    "MethodContext",
    "UnknownMethodError",
    "available_methods",
    "get_method",
    "method_descriptions",
    "register_method",
]

ENTRY_POINT_GROUP = "peftsmoothing.methods"


@dataclass(frozen=True)
class MethodConfig:
    """Base class for method configurations (frozen dataclasses).

    Subclasses declare their options as dataclass fields with defaults and validate them in
    ``__post_init__`` (raise :class:`ValueError` with a message that names the option).

    Examples:
        >>> from dataclasses import dataclass
        >>> @dataclass(frozen=True)
        ... class MyConfig(MethodConfig):
        ...     scale: float = 1.0
        >>> MyConfig.from_kwargs("my", {"scale": 2.0}).scale
        2.0
    """

    @classmethod
    def from_kwargs(cls, method_name: str, kwargs: Mapping[str, Any]) -> MethodConfig:
        """Build a config from keyword arguments, rejecting unknown keys with a helpful message.

        Args:
            method_name: Name of the method (used in error messages).
            kwargs: Option values.

        Returns:
            The validated config.

        Raises:
            TypeError: If a key is not an option of this method.

        Examples:
            >>> MethodConfig.from_kwargs("full", {})
            MethodConfig()
        """
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in kwargs if k not in valid]
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(key, valid, n=1) or [
                    v for v in valid if key.startswith(v) or v.startswith(key)
                ][:1]
                hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise TypeError(
                f"unknown option(s) for method {method_name!r}: {', '.join(hints)}; "
                f"valid options are: {', '.join(valid) if valid else '(none)'}"
            )
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """Return the options as a JSON-serialisable dict (tuples become lists).

        Examples:
            >>> MethodConfig().to_dict()
            {}
        """
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value


@dataclass
class MethodContext:
    """What :func:`peftsmoothing.wrap` tells a method about the model it is applied to.

    Attributes:
        head_name: Qualified name of the classification head inside the model (``None`` if
            unknown). Methods that train the head (e.g. ``linear``) use it.
        pixel_module: A method may set this to a module that runs on the [0, 1] input *before*
            normalization (e.g. a denoiser). ``wrap`` places it in front of the model.
        modules: New modules that a method attaches through hooks; :meth:`add_module` puts them
            here and the wrapped model owns them (as ``peft.<name>``), so they are saved,
            moved between devices and counted without being inserted into the base model.
        extra: Free-form information for plug-ins.
    """

    head_name: str | None = None
    pixel_module: nn.Module | None = None
    modules: dict[str, nn.Module] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def add_module(self, name: str, module: nn.Module) -> nn.Module:
        """Register a module the method created; dots in ``name`` become underscores.

        Examples:
            >>> from torch import nn
            >>> ctx = MethodContext()
            >>> _ = ctx.add_module("blocks.0.mlp", nn.Linear(2, 2))
            >>> list(ctx.modules)
            ['blocks_0_mlp']
        """
        key = name.replace(".", "_")
        if not key or key in self.modules:
            raise ValueError(f"a module named {key!r} was already added (or the name is empty)")
        self.modules[key] = module
        return module


class Method:
    """Base class of every PEFT method (the plug-in protocol).

    A method declares ``name`` (set by :func:`register_method`), a one-line ``description``, a
    ``Config`` frozen dataclass (subclass of :class:`MethodConfig`) and implements
    :meth:`apply`, which modifies a *frozen* model in place by adding trainable modules (or by
    unfreezing some of its parameters). Methods that can fold their parameters into the base
    weights set ``supports_merge = True`` and implement :meth:`merge` / :meth:`unmerge`.

    Examples:
        >>> import peftsmoothing as ps
        >>> from torch import nn
        >>> @ps.register_method("bias_only_doc", override=True)
        ... class BiasOnly(ps.Method):
        ...     description = "train every bias (BitFit)"
        ...     def apply(self, model, context):
        ...         for name, p in model.named_parameters():
        ...             if name.endswith("bias"):
        ...                 p.requires_grad_(True)
        >>> m = ps.wrap(nn.Linear(3, 2), method="bias_only_doc", normalize=None)
        >>> [n for n, _ in m.named_trainable_parameters()]
        ['model.bias']
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    supports_merge: ClassVar[bool] = False

    def __init__(self, config: MethodConfig | None = None) -> None:
        self.config = config if config is not None else self.Config()

    def apply(self, model: nn.Module, context: MethodContext) -> None:
        """Add the method's trainable parameters to ``model`` (in place).

        Args:
            model: The model, with every original parameter already frozen.
            context: Information about the model (head name) and a slot for a pixel-space module.
        """
        raise NotImplementedError

    def merge(self, model: nn.Module) -> None:
        """Fold trained parameters into the base weights (only if ``supports_merge``)."""
        raise NotImplementedError(f"method {self.name!r} does not support merge()")

    def unmerge(self, model: nn.Module) -> None:
        """Undo :meth:`merge` (only if ``supports_merge``)."""
        raise NotImplementedError(f"method {self.name!r} does not support unmerge()")


class UnknownMethodError(ValueError):
    """Raised when a method name is not registered (lists the available ones)."""


M = TypeVar("M", bound=type[Method])

_REGISTRY: dict[str, type[Method]] = {}
_LOCK = threading.RLock()
_ENTRY_POINTS_LOADED = False


def register_method(name: str, *, override: bool = False) -> Callable[[M], M]:
    """Class decorator that registers a :class:`Method` subclass under ``name``.

    Args:
        name: The name users pass to ``wrap(model, method=name)``.
        override: Replace an existing method of the same name instead of raising.

    Returns:
        The decorator, which returns the class unchanged (with ``name`` set).

    Raises:
        ValueError: If ``name`` is empty or already registered (and ``override`` is false).
        TypeError: If the decorated object is not a ``Method`` subclass.

    Examples:
        >>> import peftsmoothing as ps
        >>> @ps.register_method("nothing_doc", override=True)
        ... class Nothing(ps.Method):
        ...     description = "adds nothing"
        ...     def apply(self, model, context):
        ...         pass
        >>> "nothing_doc" in ps.available_methods()
        True
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError("method name must be a non-empty string")

    def decorator(cls: M) -> M:
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise TypeError(f"register_method({name!r}) expects a subclass of peftsmoothing.Method")
        if not (isinstance(cls.Config, type) and issubclass(cls.Config, MethodConfig)):
            raise TypeError(f"{cls.__name__}.Config must subclass peftsmoothing.MethodConfig")
        with _LOCK:
            existing = _REGISTRY.get(name)
            if existing is not None and existing is not cls and not override:
                raise ValueError(
                    f"a method named {name!r} is already registered "
                    f"({existing.__module__}.{existing.__qualname__}); "
                    "pass override=True to replace it"
                )
            cls.name = name
            _REGISTRY[name] = cls
        return cls

    return decorator


def _entry_points() -> Iterator[metadata.EntryPoint]:
    yield from metadata.entry_points(group=ENTRY_POINT_GROUP)


def _load_entry_points(force: bool = False) -> None:
    """Import third-party methods declared in the ``peftsmoothing.methods`` entry-point group."""
    global _ENTRY_POINTS_LOADED
    with _LOCK:
        if _ENTRY_POINTS_LOADED and not force:
            return
        _ENTRY_POINTS_LOADED = True
        for ep in _entry_points():
            if ep.name in _REGISTRY and _REGISTRY[ep.name].__module__ == ep.module:
                continue
            obj = ep.load()  # importing the module may register it through the decorator
            if ep.name not in _REGISTRY:
                if isinstance(obj, type) and issubclass(obj, Method):
                    register_method(ep.name)(obj)
                else:
                    raise TypeError(
                        f"entry point {ep.name!r} ({ep.value}) in group {ENTRY_POINT_GROUP!r} "
                        "must point to a peftsmoothing.Method subclass"
                    )


def available_methods() -> list[str]:
    """Names of every registered method, built-in and third-party, sorted.

    Examples:
        >>> import peftsmoothing as ps
        >>> {"lora", "prompt", "adapter", "full", "linear"} <= set(ps.available_methods())
        True
    """
    _load_entry_points()
    return sorted(_REGISTRY)


def method_descriptions() -> dict[str, str]:
    """Map every registered method name to its one-line description.

    Examples:
        >>> import peftsmoothing as ps
        >>> "LoRA" in ps.method_descriptions()["lora"]
        True
    """
    _load_entry_points()
    return {name: _REGISTRY[name].description for name in sorted(_REGISTRY)}


def get_method(name: str) -> type[Method]:
    """Return the method class registered under ``name``.

    Raises:
        UnknownMethodError: If no such method exists (a ``ValueError``); the message lists the
            available methods and the closest match.

    Examples:
        >>> import peftsmoothing as ps
        >>> ps.get_method("lora").supports_merge
        True
    """
    with _LOCK:
        if name not in _REGISTRY:
            _load_entry_points()
        if name in _REGISTRY:
            return _REGISTRY[name]
        names = sorted(_REGISTRY)
    close = difflib.get_close_matches(str(name), names, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UnknownMethodError(
        f"unknown method {name!r}.{hint} Available methods: {', '.join(names)}"
    )
