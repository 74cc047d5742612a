"""One generic registry: named entries of one kind, plus plug-ins from an entry-point group.

Methods (``peftsmoothing.methods.base``) and training losses (``peftsmoothing.training.losses``)
are both held by a ``Registry``. Built-in entries register when their module is imported;
third-party packages declare theirs in an entry-point group (``peftsmoothing.methods``,
``peftsmoothing.losses``), imported lazily the first time a name is looked up or listed. A
plug-in that fails to import is skipped with a warning naming it, so one broken package does
not break every command.

This module is a leaf: it imports no method and no loss. The method protocol (``Method``,
``MethodConfig``, ``MethodContext``, ``register_method``, ...) is in
``peftsmoothing.methods.base``.
"""

from __future__ import annotations

import difflib
import threading
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import KW_ONLY, dataclass, field
from importlib import metadata
from typing import Generic, TypeVar

__all__ = ["Registry", "check_options", "closest_name", "did_you_mean"]

T = TypeVar("T")


def closest_name(word: object, choices: Iterable[str], *, prefix: bool = False) -> str | None:
    """The choice closest to ``word`` (``difflib``), or ``None`` when none is close.

    Args:
        word: What the user typed.
        choices: The valid names.
        prefix: Also accept a choice that is a prefix of ``word`` or starts with it (for short
            option names such as ``r``, which ``difflib`` never finds close).

    Returns:
        The closest valid name, or ``None``.

    Examples:
        >>> closest_name("lroa", ["lora", "prompt"])
        'lora'
        >>> closest_name("rank", ["r", "alpha"]) is None, closest_name("rank", ["r"], prefix=True)
        (True, 'r')
    """
    options = list(choices)
    close = difflib.get_close_matches(str(word), options, n=1)
    if not close and prefix and isinstance(word, str):
        close = [c for c in options if word.startswith(c) or c.startswith(word)]
    return close[0] if close else None


def did_you_mean(word: object, choices: Iterable[str], *, prefix: bool = False) -> str:
    """The one "did you mean" hint: ``" (did you mean 'x'?)"``, or ``""`` when nothing is close.

    Args:
        word: What the user typed.
        choices: The valid names.
        prefix: See ``closest_name``.

    Returns:
        The hint, to append to an error message.

    Examples:
        >>> "unknown loss 'consistncy'" + did_you_mean("consistncy", ["ce", "consistency"])
        "unknown loss 'consistncy' (did you mean 'consistency'?)"
        >>> did_you_mean("zzz", ["ce"])
        ''
    """
    close = closest_name(word, choices, prefix=prefix)
    return f" (did you mean {close!r}?)" if close is not None else ""


def check_options(
    given: Iterable[str], valid: Sequence[str], owner: str, *, prefix: bool = False
) -> None:
    """Refuse option names that are not in ``valid``, each with its "did you mean" hint.

    Args:
        given: The option names passed.
        valid: The known option names, in the order the message lists them.
        owner: What takes the options, for the message (``"method 'lora'"``).
        prefix: See ``closest_name``.

    Raises:
        TypeError: Naming every unknown option and listing the valid ones.

    Examples:
        >>> check_options(["rank"], ["r", "alpha"], "method 'lora'", prefix=True)
        Traceback (most recent call last):
        ...
        TypeError: unknown option(s) for method 'lora': 'rank' (did you mean 'r'?); valid options are: r, alpha
    """  # noqa: E501
    unknown = [key for key in given if key not in valid]
    if unknown:
        hints = [f"{key!r}{did_you_mean(key, valid, prefix=prefix)}" for key in unknown]
        raise TypeError(
            f"unknown option(s) for {owner}: {', '.join(hints)}; "
            f"valid options are: {', '.join(valid) or '(none)'}"
        )


@dataclass(eq=False)
class Registry(Generic[T]):
    """Entries of one kind by name, with lazy discovery of an entry-point group.

    Args:
        kind: What an entry is, for messages (``"method"``, ``"loss"``).
        group: The entry-point group third-party packages declare entries in.
        error: The exception ``get`` raises for an unknown name (a ``ValueError``).
        describe: One line describing an entry (for ``descriptions``).
        identity: The object that makes two registrations "the same" (re-registering it is
            harmless); default: the entry itself.
        adopt: Called as ``adopt(name, obj)`` for an entry point whose import did not register
            ``name`` itself; it registers ``obj`` or raises ``TypeError``.
        unknown_message: Builds the message of ``get``'s error from ``(name, names)``.

    Examples:
        >>> colours: Registry[str] = Registry("colour", "example.colours", ValueError,
        ...                                   describe=str.upper)
        >>> colours.register("red", "warm")
        >>> colours.get("red"), colours.names(), colours.descriptions()
        ('warm', ['red'], {'red': 'WARM'})
        >>> colours.get("rde")
        Traceback (most recent call last):
        ...
        ValueError: unknown colour 'rde' (did you mean 'red'?); available colours: red
    """

    kind: str
    group: str
    error: type[ValueError]
    _: KW_ONLY
    describe: Callable[[T], str]
    identity: Callable[[T], object] = lambda entry: entry
    adopt: Callable[[str, object], None] | None = None
    unknown_message: Callable[[str, list[str]], str] | None = None
    _entries: dict[str, T] = field(default_factory=dict, init=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, init=False)
    _discovered: bool = field(default=False, init=False)

    def register(self, name: str, entry: T, *, override: bool = False) -> None:
        """Store ``entry`` under ``name``.

        Args:
            name: The entry's name.
            entry: The entry.
            override: Replace another entry of the same name instead of raising.

        Raises:
            ValueError: If ``name`` is taken by another entry and ``override`` is false.

        Examples:
            >>> r: Registry[int] = Registry("number", "example.numbers", ValueError, describe=str)
            >>> r.register("one", 1); r.register("one", 1)  # the same entry again: harmless
            >>> r.register("one", 2)
            Traceback (most recent call last):
            ...
            ValueError: a number named 'one' is already registered (int); pass override=True to replace it
        """  # noqa: E501
        with self._lock:
            existing = self.identity(self._entries.get(name, entry))  # a free name: no conflict
            if existing is not self.identity(entry) and not override:
                raise ValueError(
                    f"a {self.kind} named {name!r} is already registered "
                    f"({_origin(existing)}); pass override=True to replace it"
                )
            self._entries[name] = entry

    def unregister(self, name: str) -> None:
        """Forget ``name`` (no error if it is not registered).

        Examples:
            >>> r: Registry[int] = Registry("number", "example.numbers", ValueError, describe=str)
            >>> r.register("one", 1); r.unregister("one"); r.names()
            []
        """
        with self._lock:
            self._entries.pop(name, None)

    def get(self, name: str) -> T:
        """The entry called ``name``, discovering plug-ins first if it is not registered.

        Raises:
            ValueError: ``self.error``, naming the closest registered name and all of them.

        Examples:
            >>> r: Registry[int] = Registry("number", "example.numbers", ValueError, describe=str)
            >>> r.register("one", 1); r.get("one")
            1
        """
        with self._lock:
            if name not in self._entries:
                self.discover()
            if name in self._entries:
                return self._entries[name]
            names = sorted(self._entries)
        raise self.error((self.unknown_message or self._unknown)(name, names))

    def _unknown(self, name: str, names: list[str]) -> str:
        """The default message of ``get``'s error."""
        return (
            f"unknown {self.kind} {name!r}{did_you_mean(name, names)}; "
            f"available {self.kind}{'es' if self.kind.endswith('s') else 's'}: {', '.join(names)}"
        )

    def names(self) -> list[str]:
        """Every registered name (plug-ins included), sorted.

        Examples:
            >>> r: Registry[int] = Registry("number", "example.numbers", ValueError, describe=str)
            >>> r.register("two", 2); r.register("one", 1); r.names()
            ['one', 'two']
        """
        self.discover()
        with self._lock:
            return sorted(self._entries)

    def descriptions(self) -> dict[str, str]:
        """Every registered name (sorted) mapped to its one-line description.

        Examples:
            >>> r: Registry[int] = Registry("number", "example.numbers", ValueError, describe=str)
            >>> r.register("one", 1); r.descriptions()
            {'one': '1'}
        """
        with self._lock:
            return {name: self.describe(self._entries[name]) for name in self.names()}

    def discover(self) -> None:
        """Import the plug-ins declared in the entry-point group (once).

        A plug-in that fails to import, or points to something that is not a valid entry, is
        skipped with a ``RuntimeWarning`` naming it and its package.

        Examples:
            >>> r: Registry[int] = Registry("number", "example.numbers", ValueError, describe=str)
            >>> r.discover()  # nothing declared in this group
            >>> r.names()
            []
        """
        with self._lock:
            if self._discovered:
                return
            self._discovered = True
            for ep in metadata.entry_points(group=self.group):
                existing = self._entries.get(ep.name)
                if existing is not None and ep.module == getattr(
                    self.identity(existing), "__module__", None
                ):
                    continue  # its module is imported: it registered itself
                try:
                    obj = ep.load()  # importing the module may register the entry itself
                    if ep.name not in self._entries:
                        if self.adopt is None:
                            raise TypeError(f"it did not register a {self.kind} named {ep.name!r}")
                        self.adopt(ep.name, obj)
                except Exception as err:  # a broken plug-in must not break every command
                    package = f", package {ep.dist.name!r}" if ep.dist else ""
                    warnings.warn(
                        f"skipping the peftsmoothing {self.kind} plug-in {ep.name!r} "
                        f"({ep.value}, entry-point group {self.group!r}{package}): "
                        f"{type(err).__name__}: {err}",
                        RuntimeWarning,
                        stacklevel=2,
                    )


def _origin(obj: object) -> str:
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if module and qualname:
        return f"{module}.{qualname}"
    return type(obj).__name__

