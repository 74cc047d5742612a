"""The package's imports follow the layers that docs/design.md declares, and form no cycle.

Every import counts: at module level, inside functions, under ``if TYPE_CHECKING:`` and
``importlib.import_module("peftsmoothing....")`` with a literal name. A module may import
modules of a lower layer, and modules of its own package (``training/loop.py`` ->
``training/config.py``), never a higher or an equal layer of another package. Cycles are
checked among the imports that run (annotation-only imports may point back within their own
package). The layer table
is read from docs/design.md, so the document and the test cannot drift apart.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "peftsmoothing"
DESIGN = ROOT / "docs" / "design.md"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def resolve(current: str, is_package: bool, level: int, target: str | None) -> str:
    if level == 0:
        return target or ""
    base = current.split(".") if is_package else current.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, target] if target else base)


def _type_only_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes inside ``if TYPE_CHECKING:`` blocks."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for stmt in node.body:
                inside.update(id(n) for n in ast.walk(stmt))
    return inside


def imports_of(
    name: str, path: Path, modules: dict[str, Path], *, runtime_only: bool = False
) -> Iterator[tuple[str, int]]:
    """(imported internal module, line) for every import in the file, wherever it stands;
    with ``runtime_only``, without those under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    type_only = _type_only_nodes(tree) if runtime_only else set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        found: list[str] = []
        if isinstance(node, ast.Import):
            found = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = resolve(name, is_package, node.level, node.module)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append(sub if sub in modules else base)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and not node.args[0].value.startswith(".")
        ):
            found = [node.args[0].value]
        for target in found:
            if target == "peftsmoothing" or target.startswith("peftsmoothing."):
                while target not in modules and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target != name:
                    yield target, node.lineno


def layers() -> dict[str, int]:
    """``module prefix -> layer`` from the table between the markers in docs/design.md."""
    text = DESIGN.read_text()
    block = text.split("<!-- layers:start -->", 1)[1].split("<!-- layers:end -->", 1)[0]
    table: dict[str, int] = {}
    for line in block.splitlines():
        m = re.match(r"\|\s*(\d+)\s*\|(.*)\|", line)
        if m:
            for mod in re.findall(r"`([\w./]+)`", m.group(2)):
                if mod == "__init__.py":
                    table["peftsmoothing"] = int(m.group(1))
                    continue
                key = mod.removesuffix(".py").removesuffix("/").replace("/", ".")
                table[f"peftsmoothing.{key}"] = int(m.group(1))
    return table


def layer_of(module: str, table: dict[str, int]) -> tuple[str, int]:
    probe = module
    while "." in probe or probe == module:
        if probe in table:
            return probe, table[probe]
        if "." not in probe:
            break
        probe = probe.rsplit(".", 1)[0]
        if probe == "peftsmoothing":  # the package root is a layer of its own, not a prefix
            break
    raise KeyError(module)


def graph(runtime_only: bool = False) -> dict[str, list[tuple[str, int]]]:
    modules = all_modules()
    return {
        name: sorted(set(imports_of(name, path, modules, runtime_only=runtime_only)))
        for name, path in modules.items()
    }


def test_every_module_has_a_layer() -> None:
    table = layers()
    missing = []
    for name in all_modules():
        try:
            layer_of(name, table)
        except KeyError:
            missing.append(name)
    assert not missing, f"add these modules to the layer table in docs/design.md: {missing}"


def test_imports_only_go_down() -> None:
    table = layers()
    bad = []
    for name, deps in graph().items():
        group, rank = layer_of(name, table)
        for target, line in deps:
            t_group, t_rank = layer_of(target, table)
            same_package = t_group == group
            if not same_package and t_rank >= rank:
                bad.append(f"{name} (layer {rank}) imports {target} (layer {t_rank}), line {line}")
    assert not bad, "imports against docs/design.md's layers:\n" + "\n".join(bad)


def test_no_import_cycles() -> None:
    """No cycle among the imports of any kind: at module level, inside functions and
    annotation-only ones under ``TYPE_CHECKING`` alike."""
    deps = {name: sorted({t for t, _ in targets}) for name, targets in graph().items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in deps.get(node, []):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in deps:
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from .core import stats\n", ["peftsmoothing.core.stats"]),
        ("def f():\n    from .certify.smoothing import ABSTAIN\n",
         ["peftsmoothing.certify.smoothing"]),
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
         "    import peftsmoothing.report.accuracy\n",
         ["peftsmoothing.report.accuracy"]),
        ("import importlib\nimportlib.import_module('peftsmoothing.data.datasets')\n",
         ["peftsmoothing.data.datasets"]),
    ],
)
def test_the_parser_sees_every_kind_of_import(
    tmp_path: Path, source: str, expected: list[str]
) -> None:
    fake = ROOT / "peftsmoothing" / "zzz_probe.py"
    modules = {**all_modules(), "peftsmoothing.zzz_probe": fake}
    probe = tmp_path / "zzz_probe.py"
    probe.write_text(source)
    found = [t for t, _ in imports_of("peftsmoothing.zzz_probe", probe, modules)]
    assert found == expected


def test_module_size_limit() -> None:
    """No module over ~450 lines (470 counted) unless docs/design.md names it with its reason."""
    allowed = set(re.findall(r"`(peftsmoothing/[\w/]+\.py)` \(over 450 lines", DESIGN.read_text()))
    big = [
        f"{p.relative_to(ROOT)} ({n} lines)"
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 470 and str(p.relative_to(ROOT)) not in allowed
    ]
    assert not big, f"modules over ~450 lines (split, or say why in docs/design.md): {big}"


def _private_names_defined(tree: ast.AST) -> set[str]:
    """Private names a module defines: functions, classes, module names, attributes it sets."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            out.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            out.add(node.attr)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out.add(node.target.id)
    return {n for n in out if n.startswith("_") and not n.startswith("__")}


def test_no_module_reaches_another_modules_private_names() -> None:
    """A ``_name`` is its module's own: no other module imports it or reads it off an object
    (``trainer._state``), so a module can change its private parts alone."""
    modules = all_modules()
    trees = {name: ast.parse(path.read_text()) for name, path in modules.items()}
    defined = {name: _private_names_defined(tree) for name, tree in trees.items()}
    everywhere = set().union(*defined.values())
    bad = []
    for name, tree in trees.items():
        path = modules[name]
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                base = resolve(name, path.name == "__init__.py", node.level, node.module)
                if base == "peftsmoothing" or base.startswith("peftsmoothing."):
                    bad += [f"{name}:{node.lineno} imports {a.name} from {base}"
                            for a in node.names
                            if a.name.startswith("_") and not a.name.startswith("__")]
            elif (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                  and not node.attr.startswith("__") and node.attr in everywhere
                  and node.attr not in defined[name]
                  and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
                bad.append(f"{name}:{node.lineno} reads {ast.unparse(node)}")
    assert not bad, "private names of other modules:\n" + "\n".join(bad)
