"""Visual prompt tuning: token bookkeeping, pooling, counts, training, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import peftsmoothing as ps
from tests.conftest import tiny_cnn, tiny_vit

VARIANTS = [
    {},  # class token, token pooling
    {"global_pool": "avg"},  # class token, average pooling over patches
    {"reg_tokens": 4, "global_pool": "avg", "class_token": False, "no_embed_class": True},
    {"reg_tokens": 2},  # class + register tokens
]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("deep", [False, True])
def test_prompts_are_stripped_before_norm_and_pooling(variant: dict, deep: bool) -> None:
    base = tiny_vit(**variant)
    x = torch.rand(2, 3, 32, 32)
    tokens_before = base.forward_features(x).shape
    m = ps.wrap(base, method="prompt", num_tokens=5, deep=deep)
    seen: list[torch.Size] = []
    m.model.norm.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape))
    feats = m.model.forward_features(m.normalize(x))
    assert feats.shape == tokens_before  # pooling sees exactly prefix + patch tokens
    assert seen[-1] == tokens_before
    # inside the blocks the prompts are present, right after the prefix tokens
    inside: list[torch.Size] = []
    m.model.blocks[5].register_forward_hook(lambda mod, args, out: inside.append(out.shape))
    m(x)
    assert inside[-1][1] == tokens_before[1] + 5


@pytest.mark.parametrize("deep", [False, True])
def test_prompts_change_outputs_and_count(deep: bool, images: torch.Tensor) -> None:
    base = tiny_vit().eval()
    ref = base(ps.Normalize((0.5,) * 3, (0.5,) * 3)(images))
    m = ps.wrap(base, method="prompt", num_tokens=3, deep=deep).eval()
    assert not torch.allclose(m(images), ref, atol=1e-4)
    assert ps.parameter_report(m).trainable == (12 if deep else 1) * 3 * 192


def test_prompt_placement_after_prefix_tokens() -> None:
    base = tiny_vit(reg_tokens=2)
    m = ps.wrap(base, method="prompt", num_tokens=4)
    captured: list[torch.Tensor] = []
    m.model.blocks[0].register_forward_pre_hook(lambda mod, args: captured.append(args[0]))
    # hooks run in registration order: ours (insert) first, then the capture
    m(torch.rand(1, 3, 32, 32))
    x = captured[-1]
    assert x.shape[1] == 3 + 4 + 64
    torch.testing.assert_close(x[0, 3:7], m.peft.vpt.prompts[0])


def test_xavier_init_bound() -> None:
    m = ps.wrap(tiny_vit(), method="prompt", num_tokens=50)
    bound = (6.0 / (3 * 4 * 4 + 192)) ** 0.5
    p = m.peft.vpt.prompts
    assert p.abs().max() <= bound and p.abs().max() > 0.9 * bound


@pytest.mark.parametrize("deep", [False, True])
def test_prompts_train_on_a_toy_task(deep: bool) -> None:
    torch.manual_seed(0)
    m = ps.wrap(tiny_vit(depth=2), method="prompt", num_tokens=4, deep=deep, num_classes=2)
    x = torch.rand(16, 3, 32, 32)
    y = (x[:, 0].mean(dim=(1, 2)) > 0.5).long()
    opt = torch.optim.Adam(m.trainable_parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = nn.functional.cross_entropy(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    assert m.peft.vpt.prompts.grad is not None


def test_prompt_errors() -> None:
    with pytest.raises(ValueError, match="VisionTransformer-style"):
        ps.wrap(tiny_cnn(), method="prompt", normalize=None)
    with pytest.raises(ValueError, match="num_tokens must be >= 1"):
        ps.wrap(tiny_vit(), method="prompt", num_tokens=0)
    with pytest.raises(ValueError, match="init must be"):
        ps.wrap(tiny_vit(), method="prompt", init="kaiming")
