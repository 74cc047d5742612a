"""LoRA: identity at init, parameter counts, merge/unmerge, conv targets, loralib interop."""

from __future__ import annotations

import copy

import loralib
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import peftsmoothing as ps
from peftsmoothing.methods.lora import LoRAConv2d, LoRALinear
from tests.conftest import tiny_cnn, tiny_vit


def _randomize_trainable(model: nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def test_identity_at_init_vit(images: torch.Tensor) -> None:
    base = tiny_vit().eval()
    ref = base(ps.Normalize((0.5,) * 3, (0.5,) * 3)(images))
    m = ps.wrap(base, method="lora", r=4).eval()
    torch.testing.assert_close(m(images), ref, atol=1e-6, rtol=0)


def test_identity_at_init_cnn(images: torch.Tensor) -> None:
    base = tiny_cnn().eval()
    ref = base(images)
    m = ps.wrap(
        base, method="lora", r=2, target_modules=["conv1", "conv2", r"mlp\.\d"], normalize=None
    ).eval()
    assert isinstance(m.model.conv1, LoRAConv2d) and isinstance(m.model.mlp[0], LoRALinear)
    torch.testing.assert_close(m(images), ref, atol=1e-6, rtol=0)


def test_wraps_the_existing_weights_without_copying() -> None:
    base = tiny_vit()
    qkv_weight = base.blocks[0].attn.qkv.weight
    m = ps.wrap(base, method="lora")
    assert m.model.blocks[0].attn.qkv.weight is qkv_weight
    assert "model.blocks.0.attn.qkv.weight" in m.state_dict()  # original key names kept


@pytest.mark.parametrize("r", [1, 4, 8])
def test_trainable_count_q_v_of_vit_tiny(r: int) -> None:
    m = ps.wrap(tiny_vit(), method="lora", r=r)
    assert ps.parameter_report(m).trainable == 12 * 2 * r * (192 + 192)


def test_trainable_count_with_new_head() -> None:
    m = ps.wrap(tiny_vit(), method="lora", r=8, num_classes=7)
    assert ps.parameter_report(m).trainable == 12 * 2 * 8 * (192 + 192) + 192 * 7 + 7


def test_qkv_enable_all_three() -> None:
    m = ps.wrap(tiny_vit(), method="lora", r=2, qkv_enable=(True, True, True))
    assert ps.parameter_report(m).trainable == 12 * 3 * 2 * (192 + 192)


def test_conv_count_and_delta_is_rank_r() -> None:
    m = ps.wrap(tiny_cnn(), method="lora", r=3, target_modules="conv2", normalize=None)
    layer = m.model.conv2
    assert ps.parameter_report(m).trainable == 3 * (8 * 3 * 3 + 16)
    _randomize_trainable(m)
    delta = layer.delta_weight().flatten(1)
    assert torch.linalg.matrix_rank(delta).item() == 3


def test_only_q_and_v_slices_change(images: torch.Tensor) -> None:
    m = ps.wrap(tiny_vit(), method="lora", r=4)
    _randomize_trainable(m)
    delta = m.model.blocks[0].attn.qkv.delta_weight()
    q, k, v = delta.chunk(3, dim=0)
    assert q.abs().sum() > 0 and v.abs().sum() > 0
    assert torch.count_nonzero(k) == 0


@pytest.mark.parametrize("factory", [tiny_vit, tiny_cnn])
def test_merge_matches_and_unmerge_restores(factory, images: torch.Tensor) -> None:  # type: ignore[no-untyped-def]
    base = factory()
    kwargs = {} if factory is tiny_vit else {"target_modules": ["conv1", "conv2", "fc"]}
    m = ps.wrap(base, method="lora", r=4, normalize=None, **kwargs).eval()
    _randomize_trainable(m)
    weights_before = {k: v.clone() for k, v in m.state_dict().items()}
    y = m(images)
    m.merge()
    assert m.merged
    torch.testing.assert_close(m(images), y, atol=1e-5, rtol=1e-5)
    m.merge()  # idempotent
    m.unmerge()
    assert not m.merged
    torch.testing.assert_close(m(images), y, atol=1e-5, rtol=1e-5)
    for k, v in m.state_dict().items():
        torch.testing.assert_close(v, weights_before[k], atol=1e-5, rtol=0)


def test_merged_forward_costs_base_forward(images: torch.Tensor) -> None:
    m = ps.wrap(tiny_vit(), method="lora").eval().merge()
    calls: list[int] = []
    for module in m.modules():
        if isinstance(module, LoRALinear):
            module.lora_dropout.register_forward_hook(lambda *a: calls.append(1))
    m(images)
    assert calls == []  # merged: the low-rank branch is not evaluated at all


def test_loralib_helpers_work_on_wrapped_models() -> None:
    m = ps.wrap(tiny_vit(), method="lora", r=2, num_classes=10)
    sd = loralib.lora_state_dict(m)
    assert len(sd) == 24 and all("lora_" in k for k in sd)
    assert set(sd) == {n for n, _ in m.named_trainable_parameters() if "lora_" in n}
    loralib.mark_only_lora_as_trainable(m)
    assert all("lora_" in n for n, _ in m.named_trainable_parameters())


def test_loralib_state_dict_is_exactly_our_lora_tensors(tmp_path, images: torch.Tensor) -> None:  # type: ignore[no-untyped-def]
    m = ps.wrap(tiny_vit(), method="lora", r=2, target_modules=["qkv", "fc1"]).eval()
    _randomize_trainable(m)
    ours = {k: v for k, v in m.trained_state_dict().items() if ".lora_" in k}
    theirs = loralib.lora_state_dict(m)
    assert theirs.keys() == ours.keys() and len(ours) == 2 * 2 * 12
    assert all(torch.equal(theirs[k], ours[k]) for k in ours)
    saved = load_file(m.save(tmp_path) / "trainable.safetensors")
    assert all(torch.equal(saved[k], v) for k, v in theirs.items())
    fresh = ps.wrap(tiny_vit(), method="lora", r=2, target_modules=["qkv", "fc1"]).eval()
    assert fresh.load_state_dict(theirs, strict=False).unexpected_keys == []
    torch.testing.assert_close(fresh(images), m(images), atol=0, rtol=0)  # LoRA is all it trains


def test_frozen_parameters_get_no_gradient(images: torch.Tensor) -> None:
    m = ps.wrap(tiny_vit(), method="lora", r=2, num_classes=3)
    _randomize_trainable(m)
    m(images).sum().backward()
    for name, p in m.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


def test_errors() -> None:
    with pytest.raises(ValueError, match="r must be a positive integer"):
        ps.wrap(tiny_vit(), method="lora", r=0)
    with pytest.raises(ValueError, match="dropout"):
        ps.wrap(tiny_vit(), method="lora", dropout=1.5)
    with pytest.raises(ValueError, match="matches no Linear, Conv2d module.*Candidate modules:.*"
                       "blocks.0.attn.qkv"):
        ps.wrap(tiny_vit(), method="lora", target_modules=["query"])
    with pytest.raises(ValueError, match="no attention 'qkv' projection.*target_modules"):
        ps.wrap(tiny_cnn(), method="lora", normalize=None)
    with pytest.raises(ValueError, match="groups=1"):
        LoRAConv2d(nn.Conv2d(4, 4, 3, groups=2))


def test_dropout_is_a_module_and_model_deepcopies(images: torch.Tensor) -> None:
    m = ps.wrap(tiny_vit(), method="lora", dropout=0.1).eval()
    clone = copy.deepcopy(m)
    torch.testing.assert_close(clone(images), m(images))


def test_unmerge_restores_the_frozen_weights_bit_for_bit(images: torch.Tensor) -> None:
    m = ps.wrap(tiny_vit(), method="lora", r=4).eval()
    _randomize_trainable(m)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    y = m(images)
    for _ in range(3):
        m.merge().unmerge()
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert torch.equal(m(images), y)
