"""The public API (``peftsmoothing.__all__``) only grows: nothing is removed or renamed.

``tests/fixtures/public_api.json`` is a snapshot of every exported name: its kind, and for
functions and classes the parameters (name, kind, default) of its signature; for classes also
their public methods and properties; for exported modules their ``__all__`` members. The test
fails when a snapshot name, member or parameter is gone or changed (kind, default, position);
new names, members and parameters with defaults (or ``*args``/``**kwargs``) are allowed.

Update the snapshot after an intended change (and say so in the changelog)::

    PEFTSMOOTHING_UPDATE_API=1 python -m pytest tests/test_public_api.py
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import re
import types
from pathlib import Path
from typing import Any

import pytest

import peftsmoothing as ps

SNAPSHOT = Path(__file__).resolve().parent / "fixtures" / "public_api.json"
UPDATE_ENV = "PEFTSMOOTHING_UPDATE_API"
_POSITIONAL = ("POSITIONAL_ONLY", "POSITIONAL_OR_KEYWORD")
_VARIADIC = ("VAR_POSITIONAL", "VAR_KEYWORD")
Params = list[dict[str, Any]]


def _default(value: Any) -> str | None:
    """A stable text for a default (``None``, JSON null, when required); no memory addresses."""
    if value is inspect.Parameter.empty:
        return None
    return re.sub(r" at 0x[0-9a-f]+", "", repr(value))


def _params(obj: Any, drop_first: bool = False) -> Params | None:
    """``[{name, kind, default}]`` of ``obj``'s signature, or ``None`` when it has none."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    params = list(sig.parameters.values())[1 if drop_first else 0 :]
    return [{"name": p.name, "kind": p.kind.name, "default": _default(p.default)} for p in params]


def _members(cls: type) -> dict[str, Any]:
    """Public methods, properties and class attributes defined by the package's own classes
    (dataclass fields are ``__init__`` parameters, not members)."""
    out: dict[str, Any] = {}
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    for klass in reversed(cls.__mro__):
        if not klass.__module__.startswith("peftsmoothing"):
            continue
        for name, raw in vars(klass).items():
            if name.startswith("_") or name in fields:
                continue
            if isinstance(raw, property):
                out[name] = {"kind": "property"}
            elif isinstance(raw, staticmethod):
                out[name] = {"kind": "staticmethod", "params": _params(raw.__func__)}
            elif isinstance(raw, classmethod):
                out[name] = {"kind": "classmethod", "params": _params(raw.__func__, True)}
            elif inspect.isfunction(raw):
                out[name] = {"kind": "method", "params": _params(raw, True)}
            elif inspect.isclass(raw):
                out[name] = {"kind": "class"}
            else:
                out[name] = {"kind": "attribute"}
    return dict(sorted(out.items()))


def describe(obj: Any, nested: bool = True) -> dict[str, Any]:
    """The snapshot entry of one exported object.

    Args:
        obj: The object.
        nested: Describe a module's ``__all__`` members (one level deep).

    Returns:
        ``{"kind": ...}`` plus ``params`` / ``members`` / ``value`` where they apply.
    """
    if isinstance(obj, types.ModuleType):
        names = sorted(getattr(obj, "__all__", []))
        members = {n: describe(getattr(obj, n), nested=False) for n in names} if nested else {}
        return {"kind": "module", "members": members}
    if inspect.isclass(obj):
        return {"kind": "class", "params": _params(obj), "members": _members(obj)}
    if callable(obj):
        return {"kind": "function", "params": _params(obj)}
    entry: dict[str, Any] = {"kind": "constant", "type": type(obj).__name__}
    if isinstance(obj, (bool, int, float, str)):
        entry["value"] = repr(obj)
    return entry


def snapshot() -> dict[str, Any]:
    """Describe every name of ``peftsmoothing.__all__`` (``__version__`` by type only)."""
    out = {name: describe(getattr(ps, name)) for name in sorted(ps.__all__)}
    out["__version__"].pop("value", None)
    return out


def compare_params(where: str, old: Params | None, new: Params | None) -> list[str]:
    """Incompatibilities between two parameter lists (see the module docstring).

    Args:
        where: Name used in the messages.
        old: Snapshot parameters.
        new: Current parameters.

    Returns:
        One message per problem; empty when ``new`` accepts every call ``old`` accepted.
    """
    if old is None or new is None:
        return [] if old is None else [f"{where}: signature no longer inspectable"]
    problems: list[str] = []
    by_name = {p["name"]: (i, p) for i, p in enumerate(new)}
    last = -1
    for i, p in enumerate(old):
        if p["name"] not in by_name:
            problems.append(f"{where}: parameter {p['name']!r} removed or renamed")
            continue
        j, q = by_name[p["name"]]
        for key in ("kind", "default"):
            if p[key] != q[key]:
                problems.append(f"{where}: parameter {p['name']!r} {key} {p[key]} -> {q[key]}")
        if p["kind"] in _POSITIONAL and j != i:
            problems.append(f"{where}: positional parameter {p['name']!r} moved {i} -> {j}")
        elif j < last:
            problems.append(f"{where}: parameter {p['name']!r} moved before another one")
        last = max(last, j)
    old_names = {p["name"] for p in old}
    for q in new:
        if q["name"] not in old_names and q["default"] is None and q["kind"] not in _VARIADIC:
            problems.append(f"{where}: new parameter {q['name']!r} has no default")
    return problems


def compare(old: dict[str, Any], new: dict[str, Any], prefix: str = "ps.") -> list[str]:
    """Incompatibilities between two snapshots (entries of :func:`describe`).

    Args:
        old: The stored snapshot (or a part of it).
        new: The current one.
        prefix: Qualified-name prefix for the messages.

    Returns:
        One message per removed or changed name, member or parameter.
    """
    problems: list[str] = []
    for name, entry in old.items():
        where = f"{prefix}{name}"
        if name not in new:
            problems.append(f"{where}: removed")
            continue
        now = new[name]
        if entry["kind"] != now["kind"]:
            problems.append(f"{where}: {entry['kind']} -> {now['kind']}")
            continue
        if "params" in entry:
            problems += compare_params(where, entry["params"], now.get("params"))
        for key in ("type", "value"):
            if key in entry and entry[key] != now.get(key):
                problems.append(f"{where}: {key} {entry[key]} -> {now.get(key)}")
        if "members" in entry:
            problems += compare(entry["members"], now.get("members", {}), f"{where}.")
    return problems


def write_snapshot(path: Path = SNAPSHOT) -> None:
    """Store the current API as the snapshot."""
    path.write_text(json.dumps(snapshot(), indent=1, sort_keys=True) + "\n")


def test_public_api_only_grows() -> None:
    if os.environ.get(UPDATE_ENV) == "1":
        write_snapshot()
    stored = json.loads(SNAPSHOT.read_text())
    problems = compare(stored, snapshot())
    if problems:
        pytest.fail(
            "incompatible changes to the public API (snapshot: tests/fixtures/public_api.json):\n"
            + "\n".join(f"  - {p}" for p in problems)
            + f"\nIf intended, update the snapshot with {UPDATE_ENV}=1.",
            pytrace=False,
        )


def test_compare_allows_additions_and_catches_removals() -> None:
    def old(a: int, b: int = 1, *, c: str = "x") -> None: ...
    def added(a: int, b: int = 1, d: int = 0, *, e: bool = False, c: str = "x") -> None: ...
    def renamed(a: int, bb: int = 1, *, c: str = "x") -> None: ...
    def required(a: int, b: int = 1, *, c: str = "x", d: int) -> None: ...
    def redefault(a: int, b: int = 2, *, c: str = "x") -> None: ...
    def inserted(a: int, z: int = 0, b: int = 1, *, c: str = "x") -> None: ...

    base = {"f": describe(old), "K": describe(ps.Certificate)}
    assert compare(base, {**base, "f": describe(added), "new": describe(print)}) == []
    assert compare(base, {"f": describe(old)}) == ["ps.K: removed"]
    for changed, match in ((renamed, "'b' removed"), (required, "'d' has no default"),
                           (redefault, "'b' default 1 -> 2"), (inserted, "'b' moved 1 -> 2")):
        problems = compare(base, {**base, "f": describe(changed)})
        assert any(match in p for p in problems), problems
