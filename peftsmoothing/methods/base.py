"""The method protocol: [`Method`][peftsmoothing.Method], its
[`MethodConfig`][peftsmoothing.MethodConfig], [`MethodContext`][peftsmoothing.MethodContext], and
the registry that holds every method.

A *method* is a subclass of [`Method`][peftsmoothing.Method] with a frozen dataclass ``Config``.
Methods are added with the [`register_method`][peftsmoothing.register_method] decorator, or by
third-party packages through the entry-point group ``peftsmoothing.methods`` (discovered lazily, the
first time a name is looked up or the list of methods is requested; a plug-in that fails to import
is skipped with a warning). The core of the library never names a method.

This module imports only leaves (``peftsmoothing.core.registry``); built-in methods import it.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar, cast

from torch import nn

from ..core.names import METHOD_ENTRY_POINT_GROUP
from ..core.registry import Registry, check_options, closest_name

__all__ = [
    "ENTRY_POINT_GROUP",
    "METHODS",
    "Method",
    "MethodConfig",
    "MethodContext",
    "UnknownMethodError",
    "available_methods",
    "get_method",
    "method_descriptions",
    "register_method",
]

ENTRY_POINT_GROUP = METHOD_ENTRY_POINT_GROUP


@dataclass(frozen=True)
class MethodConfig:
    """Base class for method configurations (frozen dataclasses).

    Subclasses declare their options as dataclass fields with defaults and validate them in
    ``__post_init__`` (raise ``ValueError`` with a message that names the option).

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
        check_options(kwargs, valid, f"method {method_name!r}", prefix=True)
        return cls(**kwargs)

    def _normalize(self, **values: Any) -> None:
        """Store options in their normal form, from ``__post_init__`` only (e.g. a list of
        names as a tuple, so the config stays hashable and compares equal).

        The one place a frozen config is written, while it is being constructed; a config is
        never changed after ``__init__`` returns.
        """
        for name, value in values.items():
            object.__setattr__(self, name, value)

    @classmethod
    def saved_keys(cls) -> frozenset[str]:
        """The options a saved model may record (what ``to_dict`` writes).

        ``load`` refuses any other key in a saved ``peftsmoothing.json``: options that name
        files (e.g. the ``peft`` method's ``adapter``) are passed by the user, never read from
        a directory (docs/security.md). Override it when ``to_dict`` leaves options out.

        Examples:
            >>> MethodConfig.saved_keys()
            frozenset()
        """
        return frozenset(f.name for f in dataclasses.fields(cls))

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
    """What [`peftsmoothing.wrap`][peftsmoothing.wrap] tells a method about the model it is applied
    to.

    Attributes:
        head_name: Qualified name of the classification head inside the model (``None`` if
            unknown). Methods that train the head (e.g. ``linear``) use it.
        pixel_module: A method may set this to a module that runs on the [0, 1] input *before*
            normalization (e.g. a denoiser). ``wrap`` places it in front of the model.
        modules: New modules that a method attaches through hooks;
            [`add_module`][peftsmoothing.MethodContext.add_module] puts them here and the wrapped
            model owns them (as ``peft.<name>``), so they are saved, moved between devices and
            counted without being inserted into the base model.
        extra: Deprecated, will be removed in 0.3 (nothing reads it; keep a plug-in's own
            state on its [`Method`][peftsmoothing.Method] instance). Reading or setting it warns.
    """

    head_name: str | None = None
    pixel_module: nn.Module | None = None
    modules: dict[str, nn.Module] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=lambda: _UnsetExtra(), repr=False, compare=False)

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


class _UnsetExtra(dict):
    """The default of ``MethodContext.extra``: setting it (in ``__init__``) does not warn."""


_EXTRA_DEPRECATED = (
    "MethodContext.extra is deprecated and will be removed in 0.3: nothing reads it; keep a "
    "plug-in's own state on its Method instance"
)


def _get_extra(self: MethodContext) -> dict[str, Any]:
    warnings.warn(_EXTRA_DEPRECATED, DeprecationWarning, stacklevel=2)
    return self.__dict__.setdefault("_extra", {})


def _set_extra(self: MethodContext, value: dict[str, Any]) -> None:
    if not isinstance(value, _UnsetExtra):
        warnings.warn(_EXTRA_DEPRECATED, DeprecationWarning, stacklevel=3)
    self.__dict__["_extra"] = value


# A property after the dataclass is built: the field stays an __init__ parameter, and using it
# (``MethodContext(extra=...)``, ``ctx.extra``) warns.
setattr(MethodContext, "extra", property(_get_extra, _set_extra))  # noqa: B010


#: The config class of a method (``Method[LoRAConfig]``: ``self.config`` is a ``LoRAConfig``).
C = TypeVar("C", bound=MethodConfig)


class Method(Generic[C]):
    """Base class of every PEFT method (the plug-in protocol).

    A method declares ``name`` (set by [`register_method`][peftsmoothing.register_method]), a
    one-line ``description``, a ``Config`` frozen dataclass (subclass of
    [`MethodConfig`][peftsmoothing.MethodConfig]) and implements
    [`apply`][peftsmoothing.Method.apply], which modifies a *frozen* model in place by adding
    trainable modules (or by unfreezing some of its parameters). Methods that can fold their
    parameters into the base weights set ``supports_merge = True`` and implement
    [`merge`][peftsmoothing.Method.merge] / [`unmerge`][peftsmoothing.Method.unmerge].

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

    def __init__(self, config: C | None = None) -> None:
        self.config: C = config if config is not None else cast(C, self.Config())

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
        """Undo [`merge`][peftsmoothing.Method.merge] (only if ``supports_merge``)."""
        raise NotImplementedError(f"method {self.name!r} does not support unmerge()")


class UnknownMethodError(ValueError):
    """Raised when a method name is not registered (lists the available ones)."""


M = TypeVar("M", bound=type[Method])


def _unknown_method(name: str, names: list[str]) -> str:
    close = closest_name(name, names)
    hint = f" Did you mean {close!r}?" if close else ""
    return f"unknown method {name!r}.{hint} Available methods: {', '.join(names)}"


def _adopt(name: str, obj: object) -> None:
    if not (isinstance(obj, type) and issubclass(obj, Method)):
        raise TypeError(
            f"entry point {name!r} in group {ENTRY_POINT_GROUP!r} must point to a "
            "peftsmoothing.Method subclass"
        )
    register_method(name)(obj)


#: Every registered method class by name (built-in and third-party).
METHODS: Registry[type[Method]] = Registry(
    "method",
    ENTRY_POINT_GROUP,
    UnknownMethodError,
    describe=lambda cls: cls.description,
    adopt=_adopt,
    unknown_message=_unknown_method,
)


def register_method(name: str, *, override: bool = False) -> Callable[[M], M]:
    """Class decorator that registers a [`Method`][peftsmoothing.Method] subclass under ``name``.

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
        METHODS.register(name, cls, override=override)
        cls.name = name
        return cls

    return decorator


def available_methods() -> list[str]:
    """Names of every registered method, built-in and third-party, sorted.

    Examples:
        >>> import peftsmoothing as ps
        >>> {"lora", "prompt", "adapter", "full", "linear"} <= set(ps.available_methods())
        True
    """
    return METHODS.names()


def method_descriptions() -> dict[str, str]:
    """Map every registered method name to its one-line description.

    Examples:
        >>> import peftsmoothing as ps
        >>> "LoRA" in ps.method_descriptions()["lora"]
        True
    """
    return METHODS.descriptions()


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
    return METHODS.get(name)
