"""The command line's help: torch-free, complete (help + default per flag), runnable examples;
and the docstrings' cross-references (no Sphinx roles)."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib.util
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from peftsmoothing.cli import build_parser
from peftsmoothing.commands import COMMANDS

ROOT = Path(__file__).resolve().parents[1]

# TODO(lead): commands/certify.py is being rewritten (log format v2): its flags without help
# (--split, --precision) and its "e.g." without a backticked example are exempt until then.
NOT_YET_CHECKED: set[str] = set()


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_help_imports_neither_torch_nor_scipy() -> None:
    script = f"""
import json, sys
from peftsmoothing.cli import main
seen = {{}}
for argv in [["--help"]] + [[c, "--help"] for c in {list(COMMANDS)!r}]:
    try:
        main(argv)
    except SystemExit:
        pass
    seen[" ".join(argv)] = sorted(m for m in ("torch", "scipy", "timm") if m in sys.modules)
print(json.dumps(seen))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout  # fmt: skip
    seen = json.loads(out.splitlines()[-1])
    assert len(seen) == len(COMMANDS) + 1
    assert all(mods == [] for mods in seen.values()), seen


def test_import_is_lazy_and_public_names_resolve() -> None:
    script = """
import sys
import peftsmoothing as ps
assert "torch" not in sys.modules
import peftsmoothing.model.wrapping  # the module is not named like the function
assert callable(ps.wrap) and ps.wrap.__module__ == "peftsmoothing.model.wrapping"
from peftsmoothing import NoiseTrainer, datasets
assert set(ps.__all__) <= set(dir(ps))
print(ps.ABSTAIN, type(datasets).__name__, NoiseTrainer.__name__)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout  # fmt: skip
    assert out.split() == ["-1", "module", "NoiseTrainer"]


def test_every_flag_has_help_and_shows_its_default() -> None:
    for name, parser in subparsers().items():
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if name not in NOT_YET_CHECKED:
                assert action.help, f"{name} {action.option_strings or action.dest}: no help"
            if action.option_strings and action.default is not argparse.SUPPRESS:
                help_text = parser._get_formatter()._expand_help(action)
                assert "(default:" in help_text, (name, action.option_strings)


def test_closed_sets_are_choices() -> None:
    from peftsmoothing.core.names import DATASET_NAMES, PRECISIONS, loss_names, method_names

    parsers = subparsers()
    for command in ("train", "predict"):
        dests = {a.dest: a for a in parsers[command]._actions}
        assert list(dests["dataset"].choices) == list(DATASET_NAMES)
        assert list(dests["precision"].choices) == list(PRECISIONS)
    train = {a.dest: a for a in parsers["train"]._actions}
    assert list(train["method"].choices) == method_names()
    assert list(train["loss"].choices) == loss_names()
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--model", "m", "--root", "r", "--out", "o",
                                   "--method", "lroa"])  # fmt: skip


def test_builtin_names_match_the_registries() -> None:
    import peftsmoothing as ps
    from peftsmoothing.core import names
    from peftsmoothing.methods.base import METHODS
    from peftsmoothing.training.losses import LOSSES

    def builtin(registry: Any, package: str) -> set[str]:
        # a loss is registered as a LossSpec (defined in losses.py whoever registers it): the
        # module that counts is its function's
        def module(entry: Any) -> str:
            return getattr(getattr(entry, "fn", entry), "__module__", "")
        return {n for n in registry.names() if module(registry.get(n)).startswith(package)}

    optional = {"peft"} if importlib.util.find_spec("peft") is not None else set()
    assert {*names.BUILTIN_METHODS, *optional} == builtin(METHODS, "peftsmoothing.methods")
    assert set(names.BUILTIN_LOSSES) <= set(ps.available_losses())
    assert set(names.BUILTIN_LOSSES) == builtin(LOSSES, "peftsmoothing.training.losses")
    assert tuple(ps.datasets.DATASETS) == names.DATASET_NAMES
    assert names.METHOD_ENTRY_POINT_GROUP == ps.ENTRY_POINT_GROUP
    # the groups third-party packages declare their plug-ins in: a public contract
    assert (names.METHOD_ENTRY_POINT_GROUP, names.LOSS_ENTRY_POINT_GROUP) == (
        "peftsmoothing.methods", "peftsmoothing.losses")  # fmt: skip


def test_the_trainer_options_are_declared_once() -> None:
    """TrainerConfig's fields are the declaration: every field is a flag of ``train`` and a
    keyword of NoiseTrainer's signature, with the same default; nothing else declares them."""
    import inspect

    from peftsmoothing import NoiseTrainer, TrainerConfig
    from peftsmoothing.commands.train import add_trainer_options

    parser = argparse.ArgumentParser()
    add_trainer_options(parser)
    flags = {a.dest: a for a in parser._actions}
    signature = inspect.signature(NoiseTrainer).parameters
    config = TrainerConfig()
    for f in dataclasses.fields(TrainerConfig):
        assert f.metadata["help"] and f.name in flags, f.name
        assert flags[f.name].default == getattr(config, f.name) or f.name == "sigma"
        assert f.name in signature
        assert signature[f.name].default in (getattr(config, f.name), None)
    assert not importlib.util.find_spec("peftsmoothing.core.trainer_options")


# --------------------------------------------------------------------------- help examples
EXAMPLE = re.compile(r"(?:e\.g\.|Example:)\s+`([^`]+)`")
REQUIRED = {
    "train": ["--model", "vit_tiny_patch16_224", "--root", "data", "--out", "out"],
    "predict": ["--model", "m", "--root", "data", "--sigma", "0.25", "--out", "o.tsv"],
    "certify": ["--model", "m", "--root", "data", "--sigma", "0.25", "--out", "o.tsv"],
}


def help_examples() -> list[tuple[str, str]]:
    found = []
    for name, parser in subparsers().items():
        texts = [parser.description or ""] + [a.help or "" for a in parser._actions]
        for text in texts:
            examples = EXAMPLE.findall(text)
            if name not in NOT_YET_CHECKED:
                assert text.count("e.g.") + text.count("Example:") == len(examples), (
                    f"{name}: an example that is not a `backticked` command or flag: {text!r}"
                )
            found += [(name, example) for example in examples]
    return found


def check_train(args: argparse.Namespace) -> None:
    import timm

    from peftsmoothing.commands.train import check_method_options, parse_options, trainer_config

    trainer_config(args)
    options = parse_options(args.opt)
    if args.r is not None:
        options["r"] = args.r
    check_method_options(args.method, options)
    assert timm.is_model(args.model), args.model
    if args.model_kwargs:  # the options must build the model
        timm.create_model(args.model, pretrained=False, **parse_options(args.model_kwargs))


def test_help_examples_run() -> None:
    examples = help_examples()
    assert len(examples) >= 6
    for command, example in examples:
        words = shlex.split(example)
        if words[0] == "peftsmoothing":
            argv = words[1:]
            assert argv[0] == command
        else:
            argv = [command, *REQUIRED.get(command, []), *words]
        args = build_parser().parse_args(argv)
        if command == "train":
            check_train(args)


# ------------------------------------------------------------------- docstring cross-refs
SPHINX_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|data|mod|attr|exc|obj|const):`")
# TODO(lead): these five are being rewritten (certification-log format v2); clear the list.
ROLES_NOT_YET_REPLACED: set[str] = set()


def docstrings(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    nodes = [tree, *(n for n in ast.walk(tree)
                     if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)))]
    return [d for n in nodes if (d := ast.get_docstring(n, clean=False))]


def test_no_sphinx_roles_in_docstrings() -> None:
    offenders = []
    for path in sorted((ROOT / "peftsmoothing").rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        if rel in ROLES_NOT_YET_REPLACED:
            continue
        offenders += [f"{rel}: {m}" for d in docstrings(path) for m in SPHINX_ROLE.findall(d)]
    assert not offenders, "use [`Name`][peftsmoothing.Name] cross-references: " + str(offenders)
