"""The README's flow, offline: timm.create_model -> ps.wrap -> save -> ps.load(dir, weights).

A model made with ``timm.create_model`` (not ``ps.create_model``) records its timm name, tag and
the constructor options that differ from the name's defaults, verified by a rebuild on the
meta device; which weights it held is not recorded, so ``load`` asks (docs/security.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
from torch import nn

import peftsmoothing as ps
from peftsmoothing.backbones.architecture import timm_candidate, verify_candidate

NAME = "vit_tiny_patch16_224"
KWARGS: dict[str, Any] = {"img_size": 16, "patch_size": 4, "depth": 1, "embed_dim": 32,
                          "num_heads": 2}  # fmt: skip


def _backbone(tmp_path: Path, seed: int = 0) -> tuple[nn.Module, Path]:
    """A timm model (pretrained=False) and its state_dict saved as the user's weights file."""
    torch.manual_seed(seed)
    vit = timm.create_model(NAME, pretrained=False, **KWARGS)
    weights = tmp_path / f"backbone{seed}.pt"
    torch.save(vit.state_dict(), weights)
    return vit, weights


def _trained(vit: nn.Module, tmp_path: Path) -> tuple[ps.PEFTModel, Path]:
    model = ps.wrap(vit, method="lora", r=2, num_classes=10)
    with torch.no_grad():  # stands in for NoiseTrainer(...).fit(...)
        for p in model.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval(), model.save(tmp_path / "runs" / "lora")


def test_readme_flow_with_a_weights_file(tmp_path: Path) -> None:
    vit, weights = _backbone(tmp_path)
    model, directory = _trained(vit, tmp_path)
    recipe = json.loads((directory / "peftsmoothing.json").read_text())["base"]["recipe"]
    assert recipe == {"name": "vit_tiny_patch16_224.augreg_in21k_ft_in1k", "pretrained": None,
                      "kwargs": KWARGS, "file": None, "seed": None}  # fmt: skip
    assert ps.zoo.check_recipe(recipe)["kwargs"] == KWARGS
    with pytest.raises(ValueError, match=r"Say which weights to use: base_weights=FILE .* or "
                                         r"pretrained=True"):  # fmt: skip
        ps.load(directory)
    loaded = ps.load(directory, base_weights=weights).eval()
    x = torch.rand(3, 3, 16, 16)
    assert torch.equal(loaded(x), model(x))


def test_another_backbone_is_refused(tmp_path: Path) -> None:
    vit, _ = _backbone(tmp_path, seed=0)
    _, other = _backbone(tmp_path, seed=1)  # same architecture, other weights
    _, directory = _trained(vit, tmp_path)
    with pytest.raises(ValueError, match="other frozen weights than those of the weights file"):
        ps.load(directory, base_weights=other)


def test_pretrained_true_takes_timms_registry_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vit, weights = _backbone(tmp_path)
    model, directory = _trained(vit, tmp_path)
    real, calls = timm.create_model, []

    def registry(name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
        """timm.create_model with the user's weights file standing in for the registry."""
        if torch.get_default_device().type != "meta":  # not the sizing of the recipe
            calls.append((name, pretrained))
        built = real(name, pretrained=False, **kwargs)
        if pretrained:
            built.load_state_dict(torch.load(weights, weights_only=True))
        return built

    monkeypatch.setattr(timm, "create_model", registry)
    loaded = ps.load(directory, pretrained=True).eval()
    assert calls == [("vit_tiny_patch16_224.augreg_in21k_ft_in1k", True)]
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(loaded(x), model(x))
    with pytest.raises(ValueError, match="not both"):
        ps.load(directory, pretrained=True, base_weights=weights)
    with pytest.raises(TypeError, match="pretrained= chooses the weights"):
        ps.load(vit, directory, pretrained=True)


def test_a_saved_file_never_asks_for_a_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``"pretrained": true`` in a recipe downloads nothing unless the caller says so."""
    base = ps.create_model(NAME, pretrained=False, seed=0, **KWARGS)
    directory = ps.wrap(base, method="lora", r=2).save(tmp_path / "m")
    config = json.loads((directory / "peftsmoothing.json").read_text())
    config["base"]["recipe"]["pretrained"] = True  # as ps.create_model(..., pretrained=True)
    (directory / "peftsmoothing.json").write_text(json.dumps(config))
    real, asked = timm.create_model, []

    def registry(name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
        asked.append(pretrained)
        return real(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", registry)
    with pytest.raises(ValueError, match="pretrained=False forbids them: pass pretrained=True"):
        ps.load(directory, pretrained=False)
    with pytest.raises(ValueError, match="never downloads on a saved file's say: pass pretr"):
        ps.load(directory)
    assert True not in asked


@pytest.mark.parametrize(
    ("kwargs", "recorded"),
    [
        ({"num_classes": 7}, {"num_classes": 7}),
        ({"global_pool": "avg"}, {"global_pool": "avg"}),
        ({"act_layer": "gelu_tanh"}, None),  # not readable from the model: no recipe
        ({"mlp_ratio": 2.0}, None),
    ],
)
def test_recorded_options_are_verified_by_a_rebuild(
    kwargs: dict[str, Any], recorded: dict[str, Any] | None
) -> None:
    with torch.device("meta"):
        vit = timm.create_model(NAME, **kwargs)
    candidate = timm_candidate(vit)
    assert candidate is not None
    recipe = verify_candidate(candidate)
    assert (recipe["kwargs"] if recipe is not None else None) == recorded


def test_models_timm_did_not_make_record_no_recipe() -> None:
    assert timm_candidate(nn.Linear(2, 2)) is None
    assert ps.wrap(nn.Linear(3, 2), method="full", normalize=None).base_recipe is None


def test_base_recipe_can_be_assigned_as_before_0_2() -> None:
    """``base_recipe`` was a plain attribute before 0.2: assigning it (a copy is kept) or
    ``None`` still works, and replaces a recipe not yet verified."""
    vit = timm.create_model(NAME, pretrained=False, img_size=32, patch_size=4)
    model = ps.wrap(vit, method="lora", r=2, num_classes=10)
    mine = {"name": NAME, "seed": 3, "kwargs": {"img_size": 32, "patch_size": 4}}
    model.base_recipe = mine
    mine["seed"] = 4
    assert model.base_recipe == {**mine, "seed": 3}
    model.base_recipe = None
    assert model.base_recipe is None
