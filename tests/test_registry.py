"""Registry: registration, lookup errors, third-party plug-ins through entry points."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

import peftsmoothing as ps
from peftsmoothing.methods.base import METHODS
from peftsmoothing.training.losses import LOSSES, get_loss
from tests.conftest import tiny_vit

PLUGIN = Path(__file__).resolve().parents[1] / "examples" / "custom_method_plugin"


def test_builtins_are_registered_with_descriptions() -> None:
    names = ps.available_methods()
    assert {"lora", "prompt", "adapter", "full", "linear"} <= set(names)
    assert names == sorted(names)
    descriptions = ps.method_descriptions()
    assert all(descriptions[n] for n in ("lora", "prompt", "adapter", "full", "linear"))


def test_unknown_method_lists_available_and_closest() -> None:
    with pytest.raises(ps.UnknownMethodError, match="unknown method 'lroa'. Did you mean 'lora'"
                       r"\?.*Available methods:.*adapter.*full.*linear.*lora.*prompt"):
        ps.get_method("lroa")
    with pytest.raises(ValueError, match="Available methods"):
        ps.wrap(tiny_vit(), method="nothing-like-this")


def test_duplicate_name_needs_override() -> None:
    @ps.register_method("dup_test")
    class A(ps.Method):
        description = "a"

    with pytest.raises(ValueError, match="already registered.*override=True"):

        @ps.register_method("dup_test")
        class B(ps.Method):
            description = "b"

    @ps.register_method("dup_test", override=True)
    class C(ps.Method):
        description = "c"

    assert ps.get_method("dup_test") is C
    ps.register_method("dup_test")(C)  # re-registering the same class is harmless


def test_register_validates_the_class() -> None:
    with pytest.raises(TypeError, match="subclass of peftsmoothing.Method"):
        ps.register_method("bad")(object)  # type: ignore[type-var]
    with pytest.raises(ValueError, match="non-empty"):
        ps.register_method("")


def test_a_custom_method_with_config_through_wrap(images: torch.Tensor) -> None:
    @dataclass(frozen=True)
    class ScaleConfig(ps.MethodConfig):
        init: float = 1.0

        def __post_init__(self) -> None:
            if self.init <= 0:
                raise ValueError("init must be > 0")

    @ps.register_method("scale_test", override=True)
    class Scale(ps.Method):
        description = "a learnable output scale"
        Config = ScaleConfig

        def apply(self, model: nn.Module, context: ps.MethodContext) -> None:
            param = nn.Parameter(torch.tensor(self.config.init))  # type: ignore[attr-defined]
            holder = context.add_module("scale", nn.Module())
            holder.register_parameter("value", param)
            model.register_forward_hook(lambda mod, args, out: out * param)

    m = ps.wrap(tiny_vit(), method="scale_test", init=2.0)
    assert ps.parameter_report(m).trainable == 1
    with pytest.raises(ValueError, match="init must be > 0"):
        ps.wrap(tiny_vit(), method="scale_test", init=-1.0)


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pip-install the example plug-in into a private directory (no network, no build isolation).

    It is built from a copy, so that the build leaves nothing inside ``examples/``."""
    target = tmp_path_factory.mktemp("site")
    source = tmp_path_factory.mktemp("plugin") / PLUGIN.name
    shutil.copytree(PLUGIN, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
           "--no-build-isolation", "--no-index", "--target", str(target), str(source)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return target


def test_entry_point_plugin(installed_plugin: Path, monkeypatch: pytest.MonkeyPatch,
                            images: torch.Tensor) -> None:
    monkeypatch.syspath_prepend(str(installed_plugin))
    monkeypatch.setattr(METHODS, "_discovered", False)
    monkeypatch.delitem(METHODS._entries, "bitfit", raising=False)
    assert "bitfit" in ps.available_methods()  # discovered lazily through the entry point
    assert ps.method_descriptions()["bitfit"] == "BitFit: train only the bias terms"
    m = ps.wrap(tiny_vit(), method="bitfit")
    names = [n for n, _ in m.named_trainable_parameters()]
    assert names and all(n.endswith("bias") for n in names)
    assert m(images).shape == (4, 10)
    METHODS.unregister("bitfit")


def test_cli_lists_plugin_methods(installed_plugin: Path) -> None:
    env_path = f"{installed_plugin}"
    out = subprocess.run(
        [sys.executable, "-m", "peftsmoothing.cli", "methods"],
        check=True, capture_output=True, text=True,
        env={"PYTHONPATH": env_path, "PATH": ""},
    ).stdout
    lines = dict(line.split(None, 1) for line in out.strip().splitlines())
    assert lines["bitfit"] == "BitFit: train only the bias terms"
    assert lines["lora"].startswith("LoRA")


def fake_distribution(root: Path, name: str, entry_points: str) -> None:
    """A minimal installed distribution under ``root`` that declares ``entry_points``."""
    info = root / f"{name.replace('-', '_')}-0.0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.0.1\n")
    (info / "entry_points.txt").write_text(entry_points)


def test_a_broken_plugin_is_skipped_with_a_warning(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    fake_distribution(tmp_path, "ps-broken-plugin", textwrap.dedent("""\
        [peftsmoothing.methods]
        broken = ps_no_such_module_xyz:Broken
        not_a_method = json:dumps
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(METHODS, "_discovered", False)
    with pytest.warns(RuntimeWarning) as record:
        names = ps.available_methods()
    messages = [str(w.message) for w in record]
    assert any("plug-in 'broken'" in m and "ps-broken-plugin" in m
               and "ModuleNotFoundError" in m for m in messages), messages
    assert any("plug-in 'not_a_method'" in m and "Method subclass" in m for m in messages)
    assert "broken" not in names and "not_a_method" not in names
    assert {"lora", "prompt"} <= set(names)  # the other methods still work
    assert ps.wrap(tiny_vit(), method="lora").spec.method == "lora"


def test_loss_plugin_through_entry_point(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "ps_loss_plugin.py").write_text(textwrap.dedent("""\
        import torch.nn.functional as F
        import peftsmoothing as ps

        def half_ce(model, clean, noisy, labels, ctx):
            \"\"\"Half the cross-entropy.\"\"\"
            logits = model(noisy[0])
            return ps.LossOutput(0.5 * F.cross_entropy(logits, labels), logits)
        """))
    fake_distribution(tmp_path, "ps-loss-plugin",
                      "[peftsmoothing.losses]\nhalf_ce = ps_loss_plugin:half_ce\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(LOSSES, "_discovered", False)
    try:
        assert "half_ce" in ps.available_losses()
        assert get_loss("half_ce").description == "Half the cross-entropy."
    finally:
        LOSSES.unregister("half_ce")
        sys.modules.pop("ps_loss_plugin", None)
