"""wrap(): freezing, heads, normalization, save/load, errors."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from safetensors.torch import load_file
from timm.data import create_transform, resolve_data_config
from torch import nn

import peftsmoothing as ps
from tests.conftest import tiny_cnn, tiny_vit

ALL_METHODS = [
    ("lora", {"r": 4}),
    ("prompt", {"num_tokens": 3}),
    ("prompt", {"num_tokens": 3, "deep": True}),
    ("adapter", {"bottleneck": 4}),
    ("adapter", {"bottleneck": 4, "style": "sequential"}),
    ("full", {}),
    ("linear", {}),
]


def _perturb(model: nn.Module, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)


def test_freezes_every_original_parameter() -> None:
    base = tiny_vit()
    original = {id(p) for p in base.parameters()}
    m = ps.wrap(base, method="lora")
    for name, p in m.named_parameters():
        if id(p) in original:
            assert not p.requires_grad, name
        else:
            assert p.requires_grad and "lora_" in name, name


def test_num_classes_resets_head_and_trains_it(images: torch.Tensor) -> None:
    m = ps.wrap(tiny_vit(), method="lora", num_classes=3)
    assert m(images).shape == (4, 3)
    assert m.spec.head == "head" and m.spec.train_head
    assert all(p.requires_grad for p in m.model.head.parameters())


def test_train_head_without_reset() -> None:
    m = ps.wrap(tiny_vit(), method="lora", train_head=True)
    assert m.model.head.weight.shape == (10, 192) and m.model.head.weight.requires_grad
    m = ps.wrap(tiny_vit(), method="lora")
    assert not m.model.head.weight.requires_grad


def test_user_named_head_on_a_cnn(images: torch.Tensor) -> None:
    m = ps.wrap(tiny_cnn(), method="linear", head="fc", num_classes=4, normalize=None)
    assert m(images).shape == (4, 4)
    assert ps.parameter_report(m).trainable == 16 * 4 + 4


def test_head_errors() -> None:
    with pytest.raises(ValueError, match="must be trained"):
        ps.wrap(tiny_vit(), method="lora", num_classes=3, train_head=False)
    with pytest.raises(ValueError, match="reset_classifier.*head="):
        ps.wrap(tiny_cnn(), method="full", num_classes=3, normalize=None)
    with pytest.raises(ValueError, match="no sub-module 'classifier'.*conv1"):
        ps.wrap(tiny_cnn(), method="linear", head="classifier", normalize=None)
    with pytest.raises(ValueError, match="only an nn.Linear head"):
        ps.wrap(tiny_cnn(), method="linear", head="bn1", num_classes=2, normalize=None)
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        ps.wrap(tiny_vit(), num_classes=0)
    with pytest.raises(ValueError, match="no classification head found"):
        ps.wrap(tiny_cnn(), method="linear", normalize=None)


def test_auto_normalization_equals_timm_preprocessing() -> None:
    torch.manual_seed(0)
    base = timm.create_model("resnet18", pretrained=False, num_classes=5)
    m = ps.wrap(base, method="linear")
    cfg = resolve_data_config({}, model=base)
    tf = create_transform(**cfg)
    timm_normalize = tf.transforms[-1]
    x = torch.rand(3, 32, 32)
    torch.testing.assert_close(m.normalize(x[None])[0], timm_normalize(x))
    assert m.spec.mean == pytest.approx((0.485, 0.456, 0.406))


def test_explicit_and_no_normalization(images: torch.Tensor) -> None:
    m = ps.wrap(tiny_cnn(), method="full", normalize=((0.1, 0.2, 0.3), (0.5, 0.5, 0.5)))
    torch.testing.assert_close(m.normalize(images)[:, 1], (images[:, 1] - 0.2) / 0.5)
    m = ps.wrap(tiny_cnn(), method="full", normalize=None)
    assert isinstance(m.normalize, nn.Identity)


def test_normalization_errors() -> None:
    with pytest.raises(ValueError, match="pretrained_cfg.*normalize=\\(mean, std\\)"):
        ps.wrap(tiny_cnn(), method="full")
    with pytest.raises(ValueError, match="std must be positive"):
        ps.wrap(tiny_cnn(), method="full", normalize=((0, 0, 0), (1, 0, 1)))
    with pytest.raises(ValueError, match="normalize must be"):
        ps.wrap(tiny_cnn(), method="full", normalize="imagenet")


def test_wrapping_twice_is_refused() -> None:
    m = ps.wrap(tiny_vit(), method="lora")
    with pytest.raises(ValueError, match="already wrapped.*normalize the input twice"):
        ps.wrap(m, method="lora")
    with pytest.raises(ValueError, match="already wrapped"):
        ps.wrap(m.model, method="prompt", normalize=None)
    inner = nn.Sequential(ps.Normalize((0.5,) * 3, (0.5,) * 3), tiny_cnn())
    with pytest.raises(ValueError, match="already contains a peftsmoothing.Normalize"):
        ps.wrap(inner, method="full", normalize=((0.5,) * 3, (0.5,) * 3))
    ps.wrap(inner, method="full", normalize=None)  # fine: the user normalizes


def test_failed_wrap_restores_requires_grad() -> None:
    base = tiny_vit()
    with pytest.raises(ValueError):
        ps.wrap(base, method="lora", target_modules=["nope"])
    assert all(p.requires_grad for p in base.parameters())


@pytest.mark.parametrize(("method", "config"), ALL_METHODS)
def test_save_load_round_trip_is_bit_identical(method: str, config: dict, tmp_path) -> None:  # type: ignore[no-untyped-def]
    base = tiny_vit(seed=5)
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    m = ps.wrap(base, method=method, num_classes=7, **config)
    _perturb(m)
    m.eval()
    out = m.save(tmp_path / "ckpt", metadata={"note": "test"})
    fresh = tiny_vit(seed=99)
    fresh.load_state_dict(base_state)
    m2 = ps.load(fresh, out).eval()
    x = torch.rand(3, 3, 32, 32)
    assert torch.equal(m(x), m2(x))
    cfg = json.loads((out / "peftsmoothing.json").read_text())
    assert cfg["spec"]["method"] == method and cfg["metadata"] == {"note": "test"}
    saved = load_file(out / "trainable.safetensors")
    assert set(saved) == {n for n, _ in m.named_trainable_parameters()}


def test_saved_file_is_small(tmp_path) -> None:  # type: ignore[no-untyped-def]
    m = ps.wrap(tiny_vit(), method="lora", r=4)
    out = m.save(tmp_path)
    size = (out / "trainable.safetensors").stat().st_size
    n_bytes = 4 * ps.parameter_report(m).trainable
    assert size < n_bytes + 64 * 1024  # the trained tensors plus a little container overhead
    assert size < 0.05 * 4 * sum(p.numel() for p in m.parameters())


def test_save_keeps_buffers_of_trained_modules(tmp_path, images: torch.Tensor) -> None:  # type: ignore[no-untyped-def]
    m = ps.wrap(tiny_cnn(), method="full", normalize=None)
    m.train()
    m(images)  # trained BatchNorm: running stats change
    m.eval()
    m.save(tmp_path)
    m2 = ps.load(tiny_cnn(seed=42), tmp_path).eval()
    assert torch.equal(m(images), m2(images))


def test_frozen_batchnorm_stays_in_eval_mode(images: torch.Tensor) -> None:
    m = ps.wrap(tiny_cnn(), method="lora", target_modules=["conv1"], normalize=None)
    before = m.model.bn1.running_mean.clone()
    m.train()
    assert not m.model.bn1.training and m.model.conv1.training
    m(images)
    assert torch.equal(m.model.bn1.running_mean, before)


def test_load_rebuilds_base_from_recipe(tmp_path) -> None:  # type: ignore[no-untyped-def]
    base = ps.create_model("vit_tiny_patch16_224", seed=7, img_size=32, patch_size=4)
    m = ps.wrap(base, method="lora", r=2, num_classes=3)
    _perturb(m)
    m.eval().save(tmp_path)
    m2 = ps.load(tmp_path).eval()
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(m(x), m2(x))


def test_load_errors(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(FileNotFoundError, match="peftsmoothing.json not found"):
        ps.load(tiny_vit(), tmp_path)
    edited = tiny_vit()
    edited.blocks[0].norm1.eps = 1e-3  # changed after timm built it: no recipe rebuilds it
    ps.wrap(edited, method="lora", r=2).save(tmp_path)
    with pytest.raises(ValueError, match="does not record how to build its base model"):
        ps.load(tmp_path)
    ps.wrap(tiny_vit(), method="lora", r=2).save(tmp_path)  # plain timm: weights unknown
    with pytest.raises(ValueError, match="Say which weights to use: base_weights=FILE"):
        ps.load(tmp_path)
    with pytest.raises(ValueError, match="base model mismatch"):
        ps.load(tiny_vit(depth=2), tmp_path)


def test_merge_unsupported_and_warns_when_training_merged() -> None:
    m = ps.wrap(tiny_vit(), method="prompt")
    assert not m.supports_merge
    with pytest.raises(NotImplementedError, match="does not support merge"):
        m.merge()
    with m.merged_for_inference():  # no-op for methods that cannot merge
        pass
    lora = ps.wrap(tiny_vit(), method="lora").merge()
    with pytest.warns(UserWarning, match="unmerge"):
        lora.train()


def test_unknown_option_names_valid_keys() -> None:
    with pytest.raises(TypeError, match=r"'rank' \(did you mean 'r'\?\).*valid options are: r, "
                       "alpha, dropout, target_modules, qkv_enable"):
        ps.wrap(tiny_vit(), method="lora", rank=4)


def test_device_and_dtype_follow_the_model(images: torch.Tensor) -> None:
    base = tiny_vit().to(torch.float64)
    m = ps.wrap(base, method="lora", num_classes=3)
    assert all(p.dtype == torch.float64 for p in m.parameters())
    assert m(images.double()).dtype == torch.float64


def test_input_size_resizes_inside_the_model(tmp_path) -> None:  # type: ignore[no-untyped-def]
    base = tiny_vit(img_size=64, patch_size=8)
    seen: list[torch.Size] = []
    base.patch_embed.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape))
    m = ps.wrap(base, method="lora", r=2, input_size=64).eval()
    x = torch.rand(2, 3, 32, 32)  # native CIFAR resolution; noise would be added here
    y = m(x)
    assert seen[-1] == (2, 3, 64, 64) and y.shape == (2, 10)
    expected = nn.functional.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(m.model(m.normalize(expected)), y)
    m.save(tmp_path)
    state = {k: v for k, v in tiny_vit(img_size=64, patch_size=8).state_dict().items()}
    fresh = tiny_vit(img_size=64, patch_size=8, seed=4)
    fresh.load_state_dict(state)
    m2 = ps.load(fresh, tmp_path).eval()
    assert m2.spec.input_size == (64, 64)
    with pytest.raises(ValueError, match="size must be a positive int"):
        ps.wrap(tiny_vit(), method="lora", input_size=0)


def test_load_refuses_an_unseeded_random_base(tmp_path) -> None:  # type: ignore[no-untyped-def]
    base = ps.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4)  # no seed
    ps.wrap(base, method="lora", r=2).save(tmp_path)
    with pytest.raises(ValueError, match="randomly initialised without a recorded seed"):
        ps.load(tmp_path)


@pytest.mark.parametrize(("method", "config"), [("lora", {"r": 2}), ("adapter", {"bottleneck": 4}),
                                                ("prompt", {"num_tokens": 3, "deep": True})])
def test_deit_distilled_two_prefix_tokens_and_two_heads(method: str, config: dict) -> None:
    torch.manual_seed(0)
    base = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, img_size=32,
                             patch_size=4, depth=2)
    assert base.num_prefix_tokens == 2  # class + distillation tokens
    x = torch.rand(2, 3, 32, 32)
    base.eval()
    ref = base(ps.Normalize(*[base.pretrained_cfg[k] for k in ("mean", "std")])(x))
    m = ps.wrap(base, method=method, num_classes=4, **config).eval()
    out = m(x)
    assert out.shape == (2, 4) and ref.shape == (2, 1000)
    assert all(p.requires_grad for p in m.model.head.parameters())
    assert all(p.requires_grad for p in m.model.head_dist.parameters())
